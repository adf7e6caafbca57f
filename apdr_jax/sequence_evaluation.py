"""Held-out evaluation on sequences, for APDR and the frame-by-frame AIR baseline.

Both models are measured the same way (DESIGN §6): per-frame count accuracy,
ELBO and IWAE per sequence with the likelihood and KL parts, tracking
consistency and id switches, MOTA and IDF1 against the ground-truth boxes.
AIR has no notion of identity, so its ids are its slot indices: this is the
baseline that tracking has to beat. For AIR the per-sequence bounds are sums of
per-frame bounds (each frame is an independent model), which is still a lower
bound of the product model's log-likelihood.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from apdr_jax import apdr
from apdr_jax import evaluation
from apdr_jax import glimpse
from apdr_jax import objectives
from apdr_jax import particle_filter
from apdr_jax import tracking
from apdr_jax import tracking_motmetrics


def is_apdr(model_config) -> bool:
  return isinstance(model_config, apdr.APDRConfig)


@functools.partial(jax.jit, static_argnums=(0, 3))
def apdr_modes(model_config, params, sequences, with_canvas):
  """The posterior modes' `FrameOutputs`, `[batch, T, ...]` each."""
  return apdr.log_weight_terms(model_config, params, sequences,
                               jax.random.key(0), jnp.asarray(0.5),
                               deterministic=True,
                               with_canvas=with_canvas).frames


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apdr_search(model_config, params, sequences, rho, with_canvas, margin):
  return apdr.search_modes(model_config, params, sequences, rho, margin,
                           with_canvas=with_canvas)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apdr_best_sample(model_config, params, sequences, rng, num_samples, rho):
  """q's sample of highest log-weight out of `num_samples`, per sequence.

  Returns:
    (`FrameOutputs` of the chosen samples, `[batch, T, ...]` each; their
    log-weights `[batch]`).
  """
  out = apdr.sample_log_weight_terms(model_config, params, sequences, rng, rho,
                                    num_samples, with_canvas=True)
  log_weight, frames = out.terms.sum(-1), out.frames  # [K, batch], ...
  best = jnp.argmax(log_weight, axis=0)  # [batch]
  rows = jnp.arange(sequences.shape[0])
  return (jax.tree.map(lambda x: x[best, rows], frames),
          log_weight[best, rows])


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apdr_best_particle(model_config, params, sequences, rng, num_particles,
                        rho):
  """`_apdr_best_sample` with the samples drawn as `num_particles` particles
  resampled after every frame (`particle_filter`)."""
  out = particle_filter.particle_filter(model_config, params, sequences, rng,
                                        rho, num_particles, with_canvas=True)
  return out.frames, out.log_weight


def pixel_boxes(model_config, z_where) -> np.ndarray:
  """`[..., N, 4]` boxes (x0, y0, x1, y1) in pixels of APDR latents."""
  size = model_config.air.canvas_size
  return np.asarray(glimpse.box_corners(z_where, size, size))


def decompose(model_config, params, sequences: np.ndarray,
              batch_size: int = 50, search_margin: float = -1.0,
              rho: float = 1e-5, best_of: int = 0,
              rng: jax.Array | None = None,
              both_directions: bool = False,
              particles: bool = False) -> dict:
  """Posterior modes of every frame: counts, boxes, ids, reconstructions.

  Args:
    model_config: `APDRConfig`, or `AIRConfig` (frame by frame).
    params: trained parameters.
    sequences: `[num, T, H, W]` float32 in [0, 1].
    batch_size: sequences per evaluation batch.
    search_margin: APDR: when >= 0, q's modes refined by
      `apdr.search_modes` with this margin in nats (ignored for AIR).
    rho: the discovery prior's ρ (for the search, it prices a discovery; for
      `best_of`, it is in the log-weights).
    best_of: APDR: when > 0, instead of q's modes, the one of `best_of`
      samples of q (whole sequences) with the highest log-weight
      `log p(x, z) - log q(z | x)`: the mode of the importance-resampled
      posterior that IWAE(`best_of`) uses. Adds `log_weight [num]`.
    rng: key of the samples (`best_of` only; default `key(0)`); the
      backward reading's come from `fold_in(rng, _BACKWARD_STREAM)`.
    both_directions: APDR with `best_of`: also draw `best_of` samples of q
      reading each sequence backward in time and keep, per sequence, the
      reading whose best sample has the higher log-weight
      (`choose_direction`; an offline reading, it needs whole sequences).
    particles: APDR with `best_of`: draw the `best_of` samples as particles
      resampled after every frame by their per-frame log-weights
      (`particle_filter`), and keep the surviving lineage of highest
      log-weight, instead of `best_of` independent samples of q.

  Returns:
    dict of numpy arrays: `counts [num, T]`, `presence [num, T, N]`,
    `boxes [num, T, N, 4]`, `ids [num, T, N]` (-1 where absent),
    `reconstructions [num, T, H, W]`; with `best_of`, `log_weight [num]`;
    with `both_directions`, `backward [num]` (bool, the reading kept).
  """
  if both_directions:
    if best_of <= 0 or not is_apdr(model_config):
      raise ValueError("decompose: both_directions needs APDR and best_of > 0")
    if search_margin >= 0:
      raise ValueError("decompose: choose search_margin or best_of, not both")
    rng = jax.random.key(0) if rng is None else rng
    return read_both_directions(model_config, params, sequences, rho,
                                best_of, rng, batch_size, particles)[1]
  num, frames = sequences.shape[:2]
  if not is_apdr(model_config):
    flat = evaluation.decompose(model_config, params,
                                sequences.reshape((num * frames,) +
                                                  sequences.shape[2:]),
                                batch_size * frames)
    unflat = lambda x: x.reshape((num, frames) + x.shape[1:])
    presence = unflat(flat["presence"])
    slots = np.arange(presence.shape[-1], dtype=np.int32)
    return dict(counts=unflat(flat["counts"]), presence=presence,
                boxes=unflat(flat["boxes"]),
                ids=np.where(presence > 0.5, slots, -1).astype(np.int32),
                reconstructions=unflat(flat["reconstructions"]))
  if best_of > 0 and search_margin >= 0:
    raise ValueError("decompose: choose search_margin or best_of, not both")
  if particles and best_of <= 0:
    raise ValueError("decompose: particles needs best_of > 0 (the number of "
                     "particles)")
  if best_of > 0:
    rng = jax.random.key(0) if rng is None else rng
    # K samples of a batch are held at once (with canvases): keep K * batch
    # near the modes' batch.
    batch_size = max(1, batch_size * 4 // best_of)
  parts, log_weights = [], []
  for index, start in enumerate(range(0, num, batch_size)):
    chunk = jnp.asarray(sequences[start:start + batch_size])
    if best_of > 0:
      draw = _apdr_best_particle if particles else _apdr_best_sample
      f, log_weight = jax.device_get(draw(
          model_config, params, chunk, jax.random.fold_in(rng, index),
          best_of, jnp.asarray(rho, jnp.float32)))
      log_weights.append(log_weight)
    elif search_margin >= 0:
      f = jax.device_get(_apdr_search(model_config, params, chunk,
                                      jnp.asarray(rho, jnp.float32), True,
                                      float(search_margin)))
    else:
      f = jax.device_get(apdr_modes(model_config, params, chunk, True))
    parts.append((f.presence, f.z_where, f.ids, f.canvas))
  presence, z_where, ids, canvas = (np.concatenate(p) for p in zip(*parts))
  result = dict(counts=presence.sum(-1).astype(np.int32), presence=presence,
                boxes=pixel_boxes(model_config, z_where), ids=ids.astype(np.int32),
                reconstructions=canvas)
  if log_weights:
    result["log_weight"] = np.concatenate(log_weights)
  return result


# Folded into `rng` for the backward reading, so that its samples differ
# from the forward reading's (which fold in the chunk index).
_BACKWARD_STREAM = 0x7FFFFFFF


def reverse_time(decomposed: dict) -> dict:
  """A decomposition with its frames in reverse order.

  Every array with two or more axes is taken to be `[num, T, ...]` (all of
  `decompose`'s are) and flipped on axis 1; one-axis values such as
  `log_weight [num]` are per sequence and stay as they are.
  """
  return {k: (np.ascontiguousarray(v[:, ::-1]) if np.ndim(v) >= 2 else v)
          for k, v in decomposed.items()}


def decompose_backward(model_config, params, sequences: np.ndarray,
                       rho: float, best_of: int, rng: jax.Array,
                       batch_size: int = 50, particles: bool = False) -> dict:
  """`decompose(best_of=..., particles=...)` of the sequences read from their
  last frame to their first, with the frames put back in order.

  The model's dynamics have no direction of time built in that the data lack
  (bouncing, noisy velocities; digits that enter mirror digits that leave),
  so a reading backward is a decomposition of the same sequence by a model
  trained on data like it, and its log-weight `log p(x', z) - log q(z | x')`
  (x' the reversed sequence) estimates `log p(x')`, which a model trained on
  such data puts close to `log p(x)` (its learned dynamics, the survival
  prior among them, need not be exactly reversible). Comparing the two
  readings' log-weights is therefore a heuristic for choosing an
  explanation, and the kept log-weight is the larger of two estimates, not
  a bound. Why read backward at all: q commits at frame 0. Two digits that
  overlap there are explained by one object, and that error lasts until
  discovery splits them; read from the end, where they are apart, both are
  tracked through the overlap.
  """
  backward = decompose(model_config, params,
                       np.ascontiguousarray(sequences[:, ::-1]), batch_size,
                       rho=rho, best_of=best_of,
                       rng=jax.random.fold_in(rng, _BACKWARD_STREAM),
                       particles=particles)
  return reverse_time(backward)


def read_both_directions(model_config, params, sequences: np.ndarray,
                         rho: float, best_of: int, rng: jax.Array,
                         batch_size: int = 50,
                         particles: bool = False) -> tuple[dict, dict]:
  """The best of `best_of` samples read forward, and the better per sequence
  of that and the backward reading's (`choose_direction`).

  Returns:
    `(forward, chosen)`: `decompose(best_of=...)` with key `rng`, and the
    decomposition kept per sequence (with `backward [num]`).
  """
  forward = decompose(model_config, params, sequences, batch_size, rho=rho,
                      best_of=best_of, rng=rng, particles=particles)
  return forward, choose_direction(forward, decompose_backward(
      model_config, params, sequences, rho, best_of, rng, batch_size,
      particles))


def choose_direction(forward: dict, backward: dict) -> dict:
  """Per sequence, the reading (forward or backward, both with `log_weight`)
  of higher log-weight (a tie keeps the forward one); `backward [num]` says
  which was chosen."""
  if "log_weight" not in forward or "log_weight" not in backward:
    raise ValueError("choose_direction: both readings need `log_weight` "
                     "(decompose them with best_of > 0)")
  chosen = backward["log_weight"] > forward["log_weight"]
  result = {k: np.where(chosen.reshape((-1,) + (1,) * (np.ndim(v) - 1)),
                        backward[k], v) for k, v in forward.items()}
  result["backward"] = chosen
  return result


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apdr_bounds(model_config, params, sequences, rng, num_samples, rho):
  gates = apdr.image_gates(model_config, params, sequences)
  out = apdr.sample_log_weight_terms(model_config, params, sequences, rng, rho,
                                    num_samples, gates=gates)
  log_weight = out.terms.sum(-1)  # [K, B]
  # FIVO: the same number of samples as particles, resampled every frame.
  fivo = particle_filter.particle_filter(
      model_config, params, sequences, jax.random.fold_in(rng, 1), rho,
      num_samples, gates=gates).log_marginal
  return (objectives.iwae_bound(log_weight), log_weight.mean(0),
          out.log_likelihood.mean(0), out.kl.mean(0), fivo)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apdr_iwae(model_config, params, sequences, rng, num_samples, rho):
  out = apdr.sample_log_weight_terms(model_config, params, sequences, rng, rho,
                                    num_samples)
  return objectives.iwae_bound(out.terms.sum(-1))


def log_marginal(model_config, params, sequences: np.ndarray, rng: jax.Array,
                 rho: float, num_samples: int = 100,
                 batch_size: int = 10) -> np.ndarray:
  """IWAE(`num_samples`) estimate of `log p(x)` per sequence, `[num]` nats.

  For AIR (`AIRConfig`), the sum of the frames' independent estimates.
  """
  num, frames = sequences.shape[:2]
  if not is_apdr(model_config):
    per_frame = evaluation.log_marginal(
        model_config, params,
        sequences.reshape((num * frames,) + sequences.shape[2:]), rng, rho,
        num_samples, batch_size * frames)
    return per_frame.reshape(num, frames).sum(-1)
  rho = jnp.asarray(rho, jnp.float32)
  return np.concatenate([np.asarray(iwae) for iwae in _by_chunk(
      lambda chunk, key: _apdr_iwae(model_config, params, chunk, key,
                                    num_samples, rho),
      sequences, rng, batch_size)])


def _by_chunk(fn, sequences: np.ndarray, rng: jax.Array, batch_size: int):
  """`fn(chunk, key)` on `batch_size` sequences at a time, key `fold_in(rng,
  index)` per chunk; the list of its outputs."""
  return [fn(jnp.asarray(sequences[start:start + batch_size]),
             jax.random.fold_in(rng, index))
          for index, start in enumerate(range(0, len(sequences),
                                               batch_size))]


def bounds(model_config, params, sequences: np.ndarray, rng: jax.Array,
           rho: float, num_samples: int = 100, batch_size: int = 10) -> dict:
  """ELBO and IWAE(K) per sequence in nats, with the ELBO's likelihood and KL.

  Args:
    model_config: `APDRConfig`, or `AIRConfig` (sums of per-frame bounds).
    params: trained parameters.
    sequences: `[num, T, H, W]` float32 in [0, 1].
    rng: a key.
    rho: the discovery prior's ρ.
    num_samples: K.
    batch_size: sequences per batch.

  Returns:
    dict of floats, means over sequences: `iwae`, `elbo`, `log_likelihood`,
    `kl`, and `fivo`: the particle filter's estimate of `log p(x)` with K
    particles (`particle_filter`; its expectation is a lower bound, like
    IWAE's). For AIR, whose frames are independent, resampling after each
    frame changes nothing and `fivo` is the sum of per-frame IWAE(K) bounds,
    i.e. `iwae`.
  """
  num, frames = sequences.shape[:2]
  if not is_apdr(model_config):
    per_frame = evaluation.bounds(
        model_config, params,
        sequences.reshape((num * frames,) + sequences.shape[2:]), rng, rho,
        num_samples, batch_size * frames)
    result = {k: v * frames for k, v in per_frame.items()}
    return dict(result, fivo=result["iwae"])
  sums = np.zeros(5)
  rho = jnp.asarray(rho, jnp.float32)
  for values in _by_chunk(
      lambda chunk, key: _apdr_bounds(model_config, params, chunk, key,
                                      num_samples, rho),
      sequences, rng, batch_size):
    sums += np.array([float(v.sum()) for v in values])
  iwae, elbo, log_lik, kl, fivo = sums / num
  return dict(iwae=iwae, elbo=elbo, log_likelihood=log_lik, kl=kl, fivo=fivo)


def count_accuracy(predicted: np.ndarray, true: np.ndarray) -> dict:
  """Per-frame count accuracy (overall, per true count, over- and
  under-counts, and at each frame index `t` as `frame_count_accuracy_at_t`:
  errors that accumulate show as a falling row) and the fraction of
  sequences whose every frame is counted right.

  Args:
    predicted: `[num, T]` counts.
    true: `[num, T]` counts.
  """
  result = {f"frame_{k}": v for k, v in
            evaluation.count_accuracy(predicted.ravel(), true.ravel()).items()}
  for t in range(predicted.shape[1]):
    result[f"frame_count_accuracy_at_{t}"] = float(
        np.mean(predicted[:, t] == true[:, t]))
  result["sequence_count_accuracy"] = float(np.mean(np.all(predicted == true,
                                                           axis=1)))
  return result


# A model's boxes are square attention windows, the ground truth's are tight
# ink boxes (a "1" is 4 px wide), so IoU >= 0.5 can fail for a perfect
# tracker. Objects are matched by the distance between box centres instead
# (at most MAX_CENTRE_DISTANCE px); the standard IoU >= 0.5 scores are kept
# too, under `iou50_*`.
MAX_CENTRE_DISTANCE = 8.0


def tracking_scores(decomposed: dict, test: dict, num: int,
                    with_motmetrics: bool = True) -> dict:
  """Tracking consistency, id switches, MOTA, MOTP, IDF1.

  Matching by centre distance (`MAX_CENTRE_DISTANCE`), plus `iou50_*` with
  IoU >= 0.5, plus py-motmetrics' numbers for the centre matching under
  `motmetrics_*` when it is installed (they agree with ours; tested).
  """
  args = (decomposed["boxes"], np.where(decomposed["presence"] > 0.5,
                                        decomposed["ids"], -1),
          test["boxes"][:num], test["ids"][:num])
  centre = dict(criterion="centre", max_distance=MAX_CENTRE_DISTANCE)
  result = _numbers(tracking.tracking_metrics(*args, **centre))
  iou = _numbers(tracking.tracking_metrics(*args, iou_threshold=0.5))
  result.update({f"iou50_{k}": iou[k] for k in ("mota", "motp", "idf1",
                                                 "tracking_consistency",
                                                 "id_switches")})
  if with_motmetrics:
    try:
      summary = _numbers(tracking_motmetrics.motmetrics_summary(*args, **centre))
    except ImportError:
      summary = {}
    result.update({f"motmetrics_{k}": v for k, v in summary.items()})
  result["max_centre_distance"] = MAX_CENTRE_DISTANCE
  return result


def _numbers(metrics: dict) -> dict:
  """Only the numeric entries, as plain Python numbers (for JSON and logs)."""
  return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
          for k, v in metrics.items()
          if isinstance(v, (int, float, np.integer, np.floating))}


def prediction_error(model_config, params, sequences: np.ndarray,
                     observed: int, rng: jax.Array, rho: float) -> tuple:
  """Conditions APDR on the first `observed` frames and predicts the rest
  with the prior's means.

  Returns:
    (mean squared error per pixel of the predicted frames, the prediction
    dict of `apdr.predict` as numpy arrays).
  """
  future = sequences.shape[1] - observed
  predicted = jax.device_get(jax.jit(
      lambda p, x, k: apdr.predict(model_config, p, x, future, k, rho),
  )(params, jnp.asarray(sequences[:, :observed]), rng))
  error = float(np.mean((predicted["canvas"] - sequences[:, observed:]) ** 2))
  return error, predicted
