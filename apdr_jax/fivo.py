"""FIVO as a training objective for APDR: a particle filter that adapts its
resampling to the effective sample size, and the objective on its weights.

The filter runs `K` particles per sequence. Before frame `t` each particle
`k` carries a normalised log-weight `a_t^k` (`-log K` after a resampling);
frame `t` adds its log-weight `w_t^k = log p(x_t, z_t | z_{<t}) - log q(z_t |
...)`, and FIVO's estimate of `log p(x_{1:T})` is

    sum_t log sum_k exp(a_t^k + w_t^k)                       (Maddison et al.)

The particles are resampled (systematic) when their effective sample size
`1 / sum_k W_k^2` falls below `threshold * K`; otherwise the weights carry
over. With `threshold = 0` nothing is ever resampled and the sum telescopes to
IWAE's `log mean_k exp(sum_t w_t^k)`; above 1 every frame is resampled, as
`particle_filter.smc` does for evaluation.

Training (`fivo_rws`): the model's parameters get the gradient of that sum
through the log-joint terms, with the resampling's score-function term
dropped (the ancestor indices are constants: the standard FIVO choice, biased
but of far lower variance). The presence decisions need no score function:
q is trained as in reweighted wake-sleep, each frame's proposal toward the
particles' filtering posterior, `sum_t sum_k v_t^k grad log q(z_t^k | ...)`
with `v_t = softmax(a_t + w_t)` (q at frame `t` sees frames up to `t` only,
so the filtering posterior, not the smoothing one, is what it can match).
The samples carry no gradient (`detach_samples=True`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import apdr
from apdr_jax import particle_filter

sg = jax.lax.stop_gradient


class FilterWeights(NamedTuple):
  """The per-frame quantities of an adaptive particle filter, `[T, batch, K]`.

  Attributes:
    carried: `a_t`, the normalised log-weights each particle brings into
      frame `t`.
    log_joint: `log p(x_t, z_t | z_{<t})` of each particle's frame.
    log_q: `log q(z_t | ...)` of each particle's frame.
    resampled: `[T, batch]`, 1 where the particles were resampled after
      frame `t`.
    frames: `apdr.FrameOutputs` of every particle, leaves `[T, batch*K, ...]`
      (particle `k` of sequence `b` is row `b*K + k`).
  """
  carried: jax.Array
  log_joint: jax.Array
  log_q: jax.Array
  resampled: jax.Array
  frames: apdr.FrameOutputs


def run_filter(config: apdr.APDRConfig, params, images: jax.Array,
               rng: jax.Array, rho: jax.Array, num_particles: int, *,
               threshold: float = 0.5, num_frames: jax.Array | None = None,
               min_survival: jax.Array | float = 0.0,
               detach_samples: bool = True,
               remat: bool = False) -> FilterWeights:
  """Runs the adaptive filter over `images [batch, T, H, W]`.

  Keys: frame `t` proposes with `fold_in(rng, t)` and resamples with the
  `particle_filter` resampling stream, as `particle_filter.smc` does, so
  that with `threshold > 1` both draw the same particles. Frames at or after
  `num_frames` (a curriculum stage) are skipped: their weights are 0 and
  they add nothing to the bound. `remat` recomputes each frame in the
  backward pass, as `apdr.log_weight_terms(remat=True)` does for training.
  """
  batch, total = images.shape[:2]
  k = num_particles
  gates = apdr.image_gates(config, params, images)
  tile = lambda x: jnp.repeat(x, k, axis=0)
  offsets = (jnp.arange(batch) * k)[:, None]
  resample_rng = jax.random.fold_in(rng, particle_filter._RESAMPLE_STREAM)  # pylint: disable=protected-access
  if num_frames is None:
    num_frames = jnp.asarray(total, jnp.int32)

  def read(carry, image, gate, index):
    carry, out = apdr.frame_step(config, params, carry, tile(image),
                                 tile(gate), jax.random.fold_in(rng, index),
                                 rho, min_survival=min_survival,
                                 detach_samples=detach_samples)
    return carry, out

  if remat:
    read = jax.checkpoint(
        read, policy=jax.checkpoint_policies.save_only_these_names(
            "ink_anchor"))

  def skip(carry, image, gate, index):
    shapes = jax.eval_shape(read, carry, image, gate, index)[1]
    return carry, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def step(state, xs):
    carry, carried = state
    image, gate, index = xs
    carry, out = jax.lax.cond(index < num_frames, read, skip, carry, image,
                              gate, index)
    log_joint = out.log_joint.reshape(batch, k)
    log_q = out.log_q.reshape(batch, k)
    # q's log density enters the carried weights without gradient: q learns
    # from the wake update alone (`fivo_rws_loss`), not through the weights.
    posterior = jax.nn.log_softmax(carried + log_joint - sg(log_q), axis=-1)
    ess = 1.0 / jnp.sum(jnp.exp(2.0 * sg(posterior)), axis=-1)  # [batch]
    resample = (ess < threshold * k) & (index < num_frames)
    ancestors = jnp.where(
        resample[:, None],
        particle_filter.systematic_resample(
            jax.random.fold_in(resample_rng, index), sg(posterior)),
        jnp.arange(k)[None])
    rows = (ancestors + offsets).reshape(-1)
    carry = jax.tree.map(lambda x: x[rows], carry)
    # Resampled: uniform weights, no gradient (the dropped score term).
    carried_next = jnp.where(resample[:, None], -jnp.log(float(k)),
                             jnp.take_along_axis(posterior, ancestors, 1))
    return ((carry, carried_next),
            (carried, log_joint, log_q, resample.astype(jnp.float32), out))

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  initial = (apdr.initial_carry(config, params, batch * k),
             jnp.full((batch, k), -jnp.log(float(k))))
  _, outputs = jax.lax.scan(step, initial, (swap(images), swap(gates),
                                            jnp.arange(total)))
  return FilterWeights(*outputs)


def bound(weights: FilterWeights) -> jax.Array:
  """FIVO's estimate of `log p(x_{1:T})`, `[batch]`."""
  increments = jax.nn.logsumexp(
      weights.carried + weights.log_joint - weights.log_q, axis=-1)
  return increments.sum(0)


def fivo_rws_loss(weights: FilterWeights) -> tuple[jax.Array, jax.Array]:
  """`(loss, bound [batch])`: the model on FIVO, q on the filtering wake
  update (see the module docstring). The filter must have run with
  `detach_samples=True`."""
  log_q = weights.log_q
  model_part = jax.nn.logsumexp(
      weights.carried + weights.log_joint - sg(log_q), axis=-1).sum(0)
  filtering = jax.nn.softmax(
      sg(weights.carried + weights.log_joint - log_q), axis=-1)
  q_part = jnp.sum(filtering * log_q, axis=(0, 2))
  return -jnp.mean(model_part + q_part), bound(weights)
