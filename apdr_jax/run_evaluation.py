"""Evaluation of a run's parameters on its held-out data, and what it writes.

Glue between a run config and `evaluation` (scenes) / `sequence_evaluation`
(sequences): the periodic held-out counts of the training loop, the final
metrics with `final_metrics.json` and pictures, and the sequence metrics that
`launch.evaluate` reuses.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from apdr_jax import data
from apdr_jax import evaluation
from apdr_jax import glimpse
from apdr_jax import plotting
from apdr_jax import run_config
from apdr_jax import sequence_evaluation


def host_params(params):
  """Parameters as host arrays, so that evaluation runs on this process's
  default device whatever mesh (or hosts) the training state spans."""
  return jax.device_get(params)


def evaluate_counts(config, params, test) -> dict:
  """Held-out count accuracy (and, for sequences, tracking without
  py-motmetrics): what the training loop logs every `eval_every` steps."""
  images = data.to_float(test["images"])
  if config.data.get("kind", "scenes") == "sequences":
    decomposed = sequence_evaluation.decompose(
        run_config.model_config(config), host_params(params), images)
    result = sequence_evaluation.count_accuracy(decomposed["counts"],
                                                test["counts"])
    result.update(sequence_evaluation.tracking_scores(
        decomposed, test, len(images), with_motmetrics=False))
    result.pop("max_centre_distance")
    # The held-out figure the progress bar shows is the per-frame accuracy.
    result["count_accuracy"] = result["frame_count_accuracy"]
    return result
  result = evaluation.decompose(run_config.model_config(config), host_params(params), images,
                                config.eval_batch_size)
  return evaluation.count_accuracy(result["counts"], test["counts"])


def final_evaluation(config, params, test, workdir, is_writer=True,
                     extra=None) -> dict:
  """Counts, ELBO and IWAE on held-out scenes, a picture, `final_metrics.json`.

  `extra` (e.g. steps and wall time of this invocation) is added to the file.
  """
  if config.data.get("kind", "scenes") == "sequences":
    return final_sequence_evaluation(config, params, test, workdir, is_writer,
                                     extra)
  mc = run_config.model_config(config)
  params = host_params(params)
  num = min(config.final_eval_scenes, len(test["images"]))
  images = data.to_float(test["images"][:num])
  decomposed = evaluation.decompose(mc, params, images, config.eval_batch_size)
  result = evaluation.count_accuracy(decomposed["counts"], test["counts"][:num])
  if "backgrounds" in test:
    result.update(evaluation.background_scores(
        images, decomposed["reconstructions"],
        data.to_float(test["backgrounds"][:num]),
        decomposed.get("backgrounds")))
  result.update(evaluation.bounds(
      mc, params, images, jax.random.key(config.seed + 1),
      rho=float(run_config.rho_at(config, config.num_steps)),
      num_samples=config.final_iwae_samples))
  result["num_scenes"] = num
  result.update(extra or {})
  if is_writer:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
    plotting.save_reconstructions(
        os.path.join(workdir, "reconstructions.png"), images[:16],
        decomposed["reconstructions"][:16], decomposed["boxes"][:16],
        decomposed["presence"][:16], _first(decomposed.get("backgrounds")))
  return result


def _first(array, num: int = 16):
  return None if array is None else array[:num]


def _counts_and_tracking(decomposed, test, num: int,
                         with_motmetrics: bool = True) -> dict:
  """Per-frame count accuracy and the tracking scores of one decomposition."""
  result = sequence_evaluation.count_accuracy(decomposed["counts"],
                                              test["counts"][:num])
  result.update(sequence_evaluation.tracking_scores(
      decomposed, test, num, with_motmetrics=with_motmetrics))
  return result


def best_of_settings(config, best_of: int | None = None,
                     both_directions: bool | None = None) -> tuple[int, bool]:
  """`(best_of, both_directions)`: each argument, or the config's when None.

  The config's `both_directions` applies only with `best_of > 0`, so that
  turning best-of off (`best_of=0`) turns the backward reading off with it;
  an explicit `both_directions=True` is returned as given (the caller says
  whether it can be done).
  """
  if best_of is None:
    best_of = config.get("best_of", 0)
  if both_directions is None:
    both_directions = config.get("both_directions", False) and best_of > 0
  return int(best_of), bool(both_directions)


def evaluate_sequences(config, params, test, num: int, iwae_samples: int,
                       rng: jax.Array, rho: float,
                       search_margin: float | None = None,
                       best_of: int | None = None,
                       both_directions: bool | None = None,
                       particles: bool | None = None
                       ) -> tuple[dict, dict]:
  """Every held-out sequence metric of DESIGN §6 on the first `num`.

  With `search_margin >= 0` (default: `config.search_margin`) and APDR, the
  counts and tracking scores of `apdr.search_modes` are added under
  `search_*`; with `best_of > 0` (default: `config.best_of`), those of the
  best of `best_of` samples of q per sequence (`sequence_evaluation.decompose`)
  under `best_of_*`; and with `both_directions` too (default:
  `config.both_directions` when `best_of > 0`; `best_of_settings`), those
  of the better of that and the best of `best_of` samples reading the
  sequence backward (`sequence_evaluation.choose_direction`) under
  `both_directions_*`. With `particles` (default:
  `config.best_of_particles`), the `best_of` samples of both are particles
  resampled after every frame (`particle_filter`). The plain keys stay q's
  modes.

  Returns:
    (metrics dict of plain numbers, the decomposition for pictures).
  """
  mc = run_config.model_config(config)
  best_of, both_directions = best_of_settings(config, best_of, both_directions)
  if particles is None:
    particles = bool(config.get("best_of_particles", False)) and best_of > 0
  if particles and not (sequence_evaluation.is_apdr(mc) and best_of > 0):
    raise ValueError("evaluate_sequences: particles needs an APDR model and "
                     f"best_of > 0 (got best_of={best_of})")
  if both_directions and not (sequence_evaluation.is_apdr(mc) and best_of > 0):
    raise ValueError("evaluate_sequences: both_directions needs an APDR model "
                     f"and best_of > 0 (got best_of={best_of})")
  params = host_params(params)
  sequences = data.to_float(test["images"][:num])
  decomposed = sequence_evaluation.decompose(mc, params, sequences)
  result = _counts_and_tracking(decomposed, test, num)
  if search_margin is None:
    search_margin = config.get("search_margin", -1.0)
  if sequence_evaluation.is_apdr(mc) and search_margin >= 0:
    searched = sequence_evaluation.decompose(mc, params, sequences,
                                             search_margin=search_margin,
                                             rho=rho)
    scores = _counts_and_tracking(searched, test, num, with_motmetrics=False)
    result.update({f"search_{k}": v for k, v in scores.items()})
    result["search_margin"] = float(search_margin)
  if sequence_evaluation.is_apdr(mc) and best_of > 0:
    best_rng = jax.random.fold_in(rng, 2)
    if both_directions:
      best, both = sequence_evaluation.read_both_directions(
          mc, params, sequences, rho, best_of, best_rng, particles=particles)
    else:
      best = sequence_evaluation.decompose(mc, params, sequences, rho=rho,
                                           best_of=best_of, rng=best_rng,
                                           particles=particles)
    scores = _counts_and_tracking(best, test, num, with_motmetrics=False)
    result.update({f"best_of_{k}": v for k, v in scores.items()})
    result["best_of"] = int(best_of)
    result["best_of_particles"] = bool(particles)
    result["best_of_mean_log_weight"] = float(best["log_weight"].mean())
    if both_directions:
      scores = _counts_and_tracking(both, test, num, with_motmetrics=False)
      result.update({f"both_directions_{k}": v for k, v in scores.items()})
      result["both_directions_backward_fraction"] = float(
          both["backward"].mean())
      result["both_directions_mean_log_weight"] = float(
          both["log_weight"].mean())
  result.update(sequence_evaluation.bounds(mc, params, sequences, rng, rho,
                                           num_samples=iwae_samples))
  if sequence_evaluation.is_apdr(mc) and sequences.shape[1] >= 2:
    observed = max(1, sequences.shape[1] // 2)
    error, predicted = sequence_evaluation.prediction_error(
        mc, params, sequences[:8], observed, jax.random.fold_in(rng, 1), rho)
    result["prediction_mse"] = error
    result["prediction_observed_frames"] = observed
    decomposed["prediction"] = predicted
  result.update(num_sequences=num, iwae_samples=iwae_samples)
  return result, decomposed


def save_sequence_pictures(workdir_or_prefix: str, sequences, decomposed,
                           num: int = 4) -> list[str]:
  """`<prefix>reconstructions.gif` (boxes coloured by id) and, for APDR,
  `<prefix>prediction.gif` (observed frames, then the prior's prediction)."""
  prefix = (os.path.join(workdir_or_prefix, "") if
            os.path.isdir(workdir_or_prefix) else workdir_or_prefix)
  paths = [prefix + "reconstructions.gif"]
  plotting.save_sequence_gif(
      paths[0], sequences[:num], decomposed["reconstructions"][:num],
      decomposed["boxes"][:num], decomposed["presence"][:num],
      decomposed["ids"][:num])
  predicted = decomposed.get("prediction")
  if predicted is not None:
    num = min(num, len(predicted["canvas"]))
    future = predicted["canvas"].shape[1]
    observed = sequences.shape[1] - future
    size = sequences.shape[-1]
    boxes = np.asarray(glimpse.box_corners(jnp.asarray(predicted["z_where"]),
                                           size, size))
    paths.append(prefix + "prediction.gif")
    plotting.save_sequence_gif(
        paths[1], sequences[:num],
        np.concatenate([decomposed["reconstructions"][:num, :observed],
                        predicted["canvas"][:num]], 1),
        np.concatenate([decomposed["boxes"][:num, :observed], boxes[:num]], 1),
        np.concatenate([decomposed["presence"][:num, :observed],
                        predicted["presence"][:num]], 1),
        np.concatenate([decomposed["ids"][:num, :observed],
                        predicted["ids"][:num]], 1))
  return paths


def final_sequence_evaluation(config, params, test, workdir, is_writer=True,
                              extra=None) -> dict:
  """`final_evaluation` for sequences: metrics, GIFs, `final_metrics.json`."""
  num = min(config.final_eval_scenes, len(test["images"]))
  result, decomposed = evaluate_sequences(
      config, params, test, num, config.final_iwae_samples,
      jax.random.key(config.seed + 1),
      float(run_config.rho_at(config, config.num_steps)))
  result.update(extra or {})
  if is_writer:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
    save_sequence_pictures(workdir, data.to_float(test["images"][:num]),
                           decomposed)
  return result
