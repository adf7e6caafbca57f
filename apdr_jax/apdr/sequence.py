"""APDR over a sequence: a `lax.scan` of `frame_step` over frames, its
log-weight terms, K samples at once, curriculum stages by a traced length."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.frame import FrameOutputs
from apdr_jax.apdr.frame import frame_step
from apdr_jax.apdr.state import initial_carry


class SequenceTerms(NamedTuple):
  """A sequence's log-weight, term by term, and the per-frame outputs.

  Attributes:
    terms: `[batch, T * (2N + 1)]`, frame after frame (see `FrameOutputs`);
      `terms.sum(-1)` is `sum_t w_t`, the sequence log-weight.
    score_log_q: `[batch, T * (2N + 1)]`.
    baseline: `[batch, T * (2N + 1)]`.
    log_likelihood: `[batch]`, summed over frames.
    kl: `[batch]`, summed over frames.
    frames: `FrameOutputs` with fields `[batch, T, ...]`.
    log_q: `[batch]`, `log q` of the whole sample, summed over frames.
  """
  terms: jax.Array
  score_log_q: jax.Array
  baseline: jax.Array
  log_likelihood: jax.Array
  kl: jax.Array
  frames: FrameOutputs
  log_q: jax.Array


def image_gates(config: APDRConfig, params, images: jax.Array) -> jax.Array:
  """AIR's image gates of every frame at once: `[B, T, H, W] -> [B, T, 4L]`.

  With `discovery_input="residual"` discovery computes its gates from each
  frame's residual instead, and this returns an empty `[B, T, 0]`.
  """
  b, t = images.shape[:2]
  if config.discovery_input == "residual":
    return jnp.zeros((b, t, 0))
  gates = air.image_gates(config.air, params["air"],
                          images.reshape((b * t,) + images.shape[2:]))
  return gates.reshape(b, t, -1)


def log_weight_terms(config: APDRConfig, params, images: jax.Array,
                     rng: jax.Array, rho: jax.Array, *,
                     gates: jax.Array | None = None,
                     deterministic: bool = False,
                     with_canvas: bool = False,
                     min_survival: jax.Array | float = 0.0,
                     num_frames: jax.Array | None = None,
                     remat: bool = False,
                     detach_samples: bool = False) -> SequenceTerms:
  """Samples q over a sequence once per input and returns its log-weight.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rng: a key (one per frame is folded in).
    rho: scalar, the discovery prior's probability of one more object.
    gates: optional `[batch, T, 4*lstm]` from `image_gates`, to share it
      across samples.
    deterministic: posterior modes (evaluation).
    with_canvas: also return the reconstructions in `frames.canvas`.
    min_survival: floor on q's survival probability (see `propagate`).
    num_frames: optional int32 scalar, possibly traced: only the first
      `num_frames` frames are read (a curriculum stage). The later frames
      are skipped by a `lax.cond` (no work, forward or backward) and their
      outputs, terms included, are exactly 0, as if the sequence were cut
      there and its terms padded with zeros; one compiled step then serves
      every stage.
    remat: under autodiff, recompute each frame's forward pass in the
      backward pass instead of storing its intermediates for every frame
      (`jax.checkpoint`), except the ink anchor (a quarter of the forward
      pass, 3 numbers per object). Training uses it: on XLA:CPU the
      recomputation cost less than writing and reading the stored
      intermediates, and a skipped frame then stores nothing
      (docs/apdr_speed.md).
    detach_samples: samples without gradient (`air.infer`; RWS).

  Returns:
    `SequenceTerms`.
  """
  batch, total_frames = images.shape[:2]
  if gates is None:
    gates = image_gates(config, params, images)

  def step(carry, inputs):
    image, gate, index = inputs
    return frame_step(config, params, carry, image, gate,
                      jax.random.fold_in(rng, index), rho, deterministic,
                      with_canvas, min_survival,
                      detach_samples=detach_samples)

  if remat:
    step = jax.checkpoint(
        step, policy=jax.checkpoint_policies.save_only_these_names(
            "ink_anchor"))
  if num_frames is not None:
    read = step

    def skip(carry, inputs):
      shapes = jax.eval_shape(read, carry, inputs)[1]
      return carry, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                 shapes)

    def step(carry, inputs):  # pylint: disable=function-redefined
      return jax.lax.cond(inputs[2] < num_frames, read, skip, carry, inputs)

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  _, frames = jax.lax.scan(
      step, initial_carry(config, params, batch),
      (swap(images), swap(gates), jnp.arange(total_frames)))
  frames = jax.tree.map(swap, frames)
  flat = lambda x: x.reshape(batch, -1)
  return SequenceTerms(flat(frames.terms), flat(frames.score_log_q),
                       flat(frames.baseline), frames.log_likelihood.sum(-1),
                       frames.kl.sum(-1), frames, frames.log_q.sum(-1))


def sample_log_weight_terms(config: APDRConfig, params, images: jax.Array,
                            rng: jax.Array, rho: jax.Array, num_samples: int,
                            **kwargs) -> SequenceTerms:
  """`num_samples` samples of q per sequence in one pass.

  The samples are folded into the batch (row `k * batch + b` is sample `k`
  of sequence `b`): one pass over `K * batch` rows runs many times faster
  on XLA:CPU than `K` passes over `batch` rows (docs/apdr_speed.md). The
  image gates are computed once per sequence.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rng: one key for all samples.
    rho: scalar, the discovery prior's probability of one more object.
    num_samples: `K`.
    **kwargs: `log_weight_terms`'s keyword arguments (`gates` of the
      `batch` sequences, not tiled).

  Returns:
    `SequenceTerms` with leaves `[K, batch, ...]`.
  """
  batch = images.shape[0]
  gates = kwargs.pop("gates", None)
  if gates is None:
    gates = image_gates(config, params, images)
  tile = lambda x: jnp.broadcast_to(x[None], (num_samples,) + x.shape).reshape(
      (num_samples * batch,) + x.shape[1:])
  out = log_weight_terms(config, params, tile(images), rng, rho,
                         gates=tile(gates), **kwargs)
  return jax.tree.map(
      lambda x: x.reshape((num_samples, batch) + x.shape[1:]), out)
