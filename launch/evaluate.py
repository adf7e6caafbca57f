r"""Evaluates a trained workdir, or decomposes a user's own images.

  python -m launch.evaluate --workdir=DIR [--images=FILE.npy|.npz] \
      [--out=FILE.json] [--iwae_samples=100] [--num_scenes=1000]

Without --images: count accuracy (overall and per true count), ELBO with its
likelihood and KL parts, and the IWAE estimate on the held-out scenes, plus
`DIR/evaluation.png`. With --images (`[num, H, W]`, uint8 or floats in [0, 1]):
the inferred count and boxes of every image, and a PNG of the first 16 beside
the JSON.

For a workdir trained on sequences (APDR, or the frame-by-frame AIR baseline):
per-frame count accuracy, ELBO and IWAE per sequence, tracking consistency, id
switches, MOTA and IDF1 on the held-out sequences (`--num_scenes` counts
sequences), and GIFs; with --images (`[num, T, H, W]`) the per-frame counts,
boxes and object ids of every sequence, and a GIF. `--explain=N` (APDR) also
prints the first N held-out sequences frame by frame: objects kept and found,
their ids and centres against the true centres, and the `log p - log q` of
every decision, the quickest way to see why counts or tracks go wrong.
`--search_margin=M` (APDR, M >= 0) adds `search_*` counts and tracking scores
from `apdr.search_modes`: each frame, q's modes give way to a structure with
a previous object forgotten (discovery then re-reads its ink) when the
model's own evidence for it is higher by more than M nats. `--split=train`
scores training scenes or sequences instead of held-out ones (to choose such
settings without looking at the held-out data). `--best_of=K` (APDR, K >= 1)
adds `best_of_*` counts and tracking scores from the one of K samples of q
per sequence with the highest log-weight (with --images, the boxes and ids
come from it). `--both_directions` (with K) adds `both_directions_*`: per
sequence, the better by log-weight of that sample and the best of K samples
reading the sequence from its last frame back (with --images, the boxes and
ids come from it). `--particles` (with K) draws the K samples as particles
resampled after every frame by their per-frame log-weights (sequential Monte
Carlo) instead of K independent samples; the `fivo` bound uses them anyway.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_IMAGES = flags.DEFINE_string("images", None, "Optional .npy/.npz of images.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default: "
                           "WORKDIR/evaluation.json).")
_IWAE_SAMPLES = flags.DEFINE_integer("iwae_samples", 100, "K for IWAE.")
_NUM_SCENES = flags.DEFINE_integer("num_scenes", 1000, "Held-out scenes.")
_SEARCH_MARGIN = flags.DEFINE_float(
    "search_margin", None, "APDR: also score `apdr.search_modes` with this "
    "margin in nats (search_* keys; with --images, the boxes and ids come "
    "from it). Default: the workdir config's search_margin; negative: off.")
_BEST_OF = flags.DEFINE_integer(
    "best_of", None, "APDR: also score the best of K samples of q per "
    "sequence, by log-weight (best_of_* keys; with --images, the boxes and "
    "ids come from it). Default: the workdir config's best_of; 0: off.")
_BOTH_DIRECTIONS = flags.DEFINE_bool(
    "both_directions", None, "APDR with --best_of: also read each sequence "
    "backward and keep, per sequence, the reading whose best sample has the "
    "higher log-weight (both_directions_* keys; with --images, the boxes and "
    "ids come from it). Default: the workdir config's both_directions.")
_PARTICLES = flags.DEFINE_bool(
    "particles", None, "APDR with --best_of=K: draw the K samples as "
    "particles resampled after every frame (sequential Monte Carlo) instead "
    "of K independent samples of q. Default: the workdir config's "
    "best_of_particles.")
_SPLIT = flags.DEFINE_enum(
    "split", "test", ["test", "train"], "Which scenes or sequences to score: "
    "the held-out ones, or the training ones (to choose evaluation-time "
    "settings such as --search_margin without looking at held-out data).")
_EXPLAIN = flags.DEFINE_integer(
    "explain", 0, "APDR: print the posterior modes of the first N held-out "
    "sequences frame by frame (kept/found objects, ids, centres against the "
    "truth, each decision's log p - log q) and add them to the JSON.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with common.user_errors():
    result = run(_WORKDIR.value, _IMAGES.value, _OUT.value,
                 _IWAE_SAMPLES.value, _NUM_SCENES.value, _EXPLAIN.value,
                 _SEARCH_MARGIN.value, _SPLIT.value, _BEST_OF.value,
                 _BOTH_DIRECTIONS.value, _PARTICLES.value)
  print(common.format_result(
      {k: v for k, v in result.items() if not isinstance(v, list)}))


def run(workdir, images_path, out_path, iwae_samples, num_scenes,
        explain: int = 0, search_margin: float | None = None,
        split: str = "test", best_of: int | None = None,
        both_directions: bool | None = None,
        particles: bool | None = None) -> dict:
  import jax
  from apdr_jax import api, data, evaluation, plotting, run_config
  from apdr_jax.errors import ConfigError

  if iwae_samples < 1 or num_scenes < 1:
    raise ConfigError("--iwae_samples and --num_scenes must be >= 1")
  if explain < 0:
    raise ConfigError(f"--explain={explain} must be >= 0")
  if best_of is not None and best_of < 0:
    raise ConfigError(f"--best_of={best_of} must be >= 0 (0: off)")
  if split not in ("test", "train"):
    raise ConfigError(f"--split={split!r}; use 'test' or 'train'")
  model = api.load(workdir)
  config, step, params = model.config, model.step, model.params
  mc = model.model_config
  out_path = out_path or os.path.join(workdir, "evaluation.json")
  if explain and not run_config.is_sequential(config):
    raise ConfigError("--explain applies to APDR workdirs (model_name='apdr')")
  if (search_margin is not None and search_margin >= 0 and
      not run_config.is_sequential(config)):
    raise ConfigError("--search_margin applies to APDR workdirs "
                      "(model_name='apdr')")
  if best_of and not run_config.is_sequential(config):
    raise ConfigError("--best_of applies to APDR workdirs (model_name='apdr')")
  if both_directions and not run_config.is_sequential(config):
    raise ConfigError("--both_directions applies to APDR workdirs "
                      "(model_name='apdr')")
  if particles and not run_config.is_sequential(config):
    raise ConfigError("--particles applies to APDR workdirs "
                      "(model_name='apdr')")
  if config.data.get("kind", "scenes") == "sequences":
    return _run_sequences(config, params, step, workdir, images_path,
                          out_path, iwae_samples, num_scenes, explain,
                          search_margin, split, best_of, both_directions,
                          particles)
  picture = os.path.splitext(out_path)[0] + ".png"
  result = {"workdir": workdir, "step": step, "split": split}
  if images_path:
    images = data.load_user_images(images_path, mc.canvas_size)
    decomposed = model.decompose(images)
    result["num_images"] = len(images)
    result["images"] = [
        {"index": i, "count": int(decomposed["counts"][i]),
         "boxes": [[round(float(v), 2) for v in box] for box, present in
                   zip(decomposed["boxes"][i], decomposed["presence"][i])
                   if present > 0.5]}
        for i in range(len(images))]
  else:
    test = _scored_split(config, split)
    num = min(num_scenes, len(test["images"]))
    images = data.to_float(test["images"][:num])
    decomposed = evaluation.decompose(mc, params, images)
    result.update(evaluation.count_accuracy(decomposed["counts"],
                                            test["counts"][:num]))
    if "backgrounds" in test:
      result.update(evaluation.background_scores(
          images, decomposed["reconstructions"],
          data.to_float(test["backgrounds"][:num]),
          decomposed.get("backgrounds")))
    result.update(evaluation.bounds(
        mc, params, images, jax.random.key(0),
        rho=float(run_config.rho_at(config, int(step))),
        num_samples=iwae_samples))
    result.update(num_scenes=num, iwae_samples=iwae_samples)
  plotting.save_reconstructions(
      picture, images[:16], decomposed["reconstructions"][:16],
      decomposed["boxes"][:16], decomposed["presence"][:16],
      None if "backgrounds" not in decomposed else
      decomposed["backgrounds"][:16])
  result["picture"] = picture
  with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out_path} and {picture}")
  return result


def _scored_split(config, split: str) -> dict:
  from apdr_jax import input_pipeline
  train_data, test = input_pipeline.load_data(config)
  return train_data if split == "train" else test


def _run_sequences(config, params, step, workdir, images_path, out_path,
                   iwae_samples, num_scenes, explain=0,
                   search_margin=None, split="test", best_of=None,
                   both_directions=None, particles=None) -> dict:
  import jax
  from apdr_jax import explain as frame_readings
  from apdr_jax import (data, run_config, run_evaluation,
                        sequence_evaluation)
  from apdr_jax.errors import ConfigError

  mc = run_config.model_config(config)
  canvas = config.data.canvas_size
  prefix = os.path.splitext(out_path)[0] + "_"
  result = {"workdir": workdir, "step": step, "split": split}
  rho = float(run_config.rho_at(config, step))
  if search_margin is None:
    search_margin = config.get("search_margin", -1.0)
  # From the workdir's config where a flag is not given; --best_of=0 turns
  # the backward reading off with best-of.
  best_of, both_directions = run_evaluation.best_of_settings(
      config, best_of, both_directions)
  if both_directions and best_of <= 0:
    raise ConfigError("--both_directions needs --best_of=K with K >= 1 (it "
                      "keeps the better of the best forward and the best "
                      "backward sample of K)")
  if particles is None:
    particles = bool(config.get("best_of_particles", False)) and best_of > 0
  if particles and best_of <= 0:
    raise ConfigError("--particles needs --best_of=K with K >= 1 (the number "
                      "of particles)")
  if best_of > 0 and search_margin >= 0 and images_path:
    raise ConfigError(f"--images: the boxes and ids come from one inference; "
                      f"choose --best_of={best_of} or --search_margin="
                      f"{search_margin}, not both (--search_margin=-1 or "
                      f"--best_of=0 turns one off)")
  if images_path:
    sequences = data.load_user_images(images_path, canvas, sequences=True)
    decomposed = sequence_evaluation.decompose(
        mc, params, sequences, search_margin=search_margin, rho=rho,
        best_of=best_of, both_directions=both_directions,
        particles=particles)
    if search_margin >= 0:
      result["search_margin"] = float(search_margin)
    if best_of > 0:
      result["best_of"] = int(best_of)
    if particles:
      result["best_of_particles"] = True
    if both_directions:
      result["both_directions"] = True
      result["backward"] = [bool(b) for b in decomposed["backward"]]
    result["num_sequences"] = len(sequences)
    result["sequences"] = [
        {"index": i, "frames": [
            {"count": int(decomposed["counts"][i, t]),
             "objects": [{"id": int(obj_id),
                          "box": [round(float(v), 2) for v in box]}
                         for box, obj_id, present in zip(
                             decomposed["boxes"][i, t], decomposed["ids"][i, t],
                             decomposed["presence"][i, t]) if present > 0.5]}
            for t in range(sequences.shape[1])]}
        for i in range(len(sequences))]
  else:
    test = _scored_split(config, split)
    num = min(num_scenes, len(test["images"]))
    metrics, decomposed = run_evaluation.evaluate_sequences(
        config, params, test, num, iwae_samples, jax.random.key(0),
        rho, search_margin, best_of, both_directions, particles)
    result.update(metrics)
    sequences = data.to_float(test["images"][:num])
    if explain:
      table = frame_readings.explain_frames(
          mc, params, sequences[:explain],
          {k: test[k][:explain] for k in ("boxes", "presence")})
      print(frame_readings.format_explained(table))
      result["explained"] = table
  result["pictures"] = run_evaluation.save_sequence_pictures(
      prefix, sequences, decomposed)
  with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out_path} and {', '.join(result['pictures'])}")
  return result


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
