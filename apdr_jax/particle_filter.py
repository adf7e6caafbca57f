"""Sequential Monte Carlo over APDR's frames: the FIVO estimator and a decoder.

APDR's log-weight splits per frame (DESIGN §3.3): `w_t = log p(x_t | z_t) +
log p(z_t | z_{<t}) - log q(z_t | x_t, z_{<t})`. Independent samples of q
(IWAE, `best_of`) must get every frame right at once, and the chance of that
falls geometrically with `T`. A particle filter (Maddison, Lawson et al., 2017;
notes §6) uses the `w_t` as they come: K particles each propose frame `t` from
q, and are resampled in proportion to `exp(w_t)` before frame `t + 1`, so that
a particle that mis-explained frame `t` is replaced by one that did not.

* `log_marginal = sum_t log mean_k exp(w_t^k)` is FIVO's estimate of
  `log p(x_{1:T})`: unbiased in `p` itself, so its expectation is a lower bound
  of the log-likelihood, at least as tight in practice as IWAE(K) on long
  sequences.
* The decoded trajectory is, among the particles alive after the last frame,
  the one whose history has the highest `sum_t w_t` (the log-weight that
  `best_of` maximises over independent samples). Its history is read back
  through the ancestor indices.

No ground truth is used. Resampling happens after every frame (systematic
resampling, the lowest-variance of the standard schemes). The weights are not
differentiated through: this is for evaluation, not for training.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import apdr
from apdr_jax import objectives


# Folded into the key for the resampling draws, apart from the proposals'.
_RESAMPLE_STREAM = 0x5EED


class ParticleTrajectory(NamedTuple):
  """A particle filter's decoding of a batch of sequences.

  Attributes:
    frames: the kept trajectory's per-step outputs (`apdr.FrameOutputs` for
      APDR), leaves `[batch, T, ...]`.
    log_weight: `[batch]`, `sum_t w_t` of the kept trajectory.
    log_marginal: `[batch]`, FIVO's `sum_t log mean_k exp(w_t^k)`.
  """
  frames: apdr.FrameOutputs
  log_weight: jax.Array
  log_marginal: jax.Array


def systematic_resample(rng: jax.Array, log_weights: jax.Array) -> jax.Array:
  """Ancestor indices by systematic resampling.

  Args:
    rng: a key.
    log_weights: `[batch, K]` unnormalised log-weights (NaN counts as -inf).

  Returns:
    `[batch, K]` int32 indices into the K particles; particle `k` is chosen
    `K * W_k` times up to rounding, `W = softmax(log_weights)`.
  """
  batch, k = log_weights.shape
  log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
  cdf = jnp.cumsum(jax.nn.softmax(log_weights, axis=-1), axis=-1)
  points = (jax.random.uniform(rng, (batch, 1)) + jnp.arange(k)) / k
  # Counted against the cdf's last entry, which rounding may put below 1.
  points = points * cdf[:, -1:]
  ancestors = jax.vmap(jnp.searchsorted)(cdf, points)
  return jnp.minimum(ancestors, k - 1).astype(jnp.int32)


def _trace_back(ancestors: jax.Array, last: jax.Array) -> jax.Array:
  """Each frame's particle index along the kept lineage.

  Args:
    ancestors: `[T, batch, K]`; `ancestors[t, b, k]` is the particle of frame
      `t` that particle `k` of frame `t + 1` descends from.
    last: `[batch]`, the kept particle of the last frame.

  Returns:
    `[T, batch]` particle indices.
  """
  def step(index, parents):  # index: this frame's; parents: frame t-1's map
    earlier = jnp.take_along_axis(parents, index[:, None], axis=1)[:, 0]
    return earlier, index

  # Frame t reads ancestors[t - 1]; frame 0's entry is never used.
  shifted = jnp.concatenate([ancestors[:1], ancestors[:-1]])
  _, indices = jax.lax.scan(step, last, shifted, reverse=True)
  return indices


def smc(step_fn: Callable, initial: Any, inputs: Any, rng: jax.Array,
        batch: int, num_particles: int) -> ParticleTrajectory:
  """A particle filter over any sequence model with per-step log-weights.

  Args:
    step_fn: `(carry, input, key) -> (carry, log_w, out)` for all particles
      at once: `carry` leaves `[batch*K, ...]`, `input` leaves
      `[batch*K, ...]`, `log_w [batch*K]` the step's incremental
      log-weight, `out` a pytree with leaves `[batch*K, ...]`. Particle `k` of
      sequence `b` is row `b*K + k`.
    initial: the carry before the first step, leaves `[batch*K, ...]`.
    inputs: a pytree with leaves `[T, batch, ...]`, tiled over particles.
    rng: a key; step `t` proposes with `fold_in(rng, t)` and resamples with
      a key folded from a separate stream.
    batch: number of sequences.
    num_particles: K.

  Returns:
    `ParticleTrajectory`, with `frames` the kept lineage's `out`, leaves
    `[batch, T, ...]`.
  """
  k = num_particles
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [batch, ...] -> [batch*K, ...]
  offsets = (jnp.arange(batch) * k)[:, None]
  resample_rng = jax.random.fold_in(rng, _RESAMPLE_STREAM)

  def step(state, xs):
    carry, lineage = state  # lineage [batch, K]: sum_s w_s of each history
    inp, index = xs
    carry, log_w, out = step_fn(carry, jax.tree.map(tile, inp),
                                jax.random.fold_in(rng, index))
    log_w = log_w.reshape(batch, k)
    lineage = lineage + log_w
    ancestors = systematic_resample(
        jax.random.fold_in(resample_rng, index), log_w)
    rows = (ancestors + offsets).reshape(-1)
    carry = jax.tree.map(lambda x: x[rows], carry)
    # `out` and `lineage` are the particles' before resampling.
    return ((carry, jnp.take_along_axis(lineage, ancestors, axis=1)),
            (out, ancestors, lineage, objectives.log_mean_exp(log_w, axis=1)))

  num_steps = jax.tree.leaves(inputs)[0].shape[0]
  _, (outs, ancestors, lineages, log_means) = jax.lax.scan(
      step, (initial, jnp.zeros((batch, k))), (inputs, jnp.arange(num_steps)))
  final = jnp.where(jnp.isnan(lineages[-1]), -jnp.inf, lineages[-1])
  indices = _trace_back(ancestors, jnp.argmax(final, axis=1))  # [T, batch]
  steps, rows = jnp.arange(num_steps)[:, None], jnp.arange(batch)[None]
  pick = lambda x: jnp.swapaxes(
      x.reshape((num_steps, batch, k) + x.shape[2:])[steps, rows, indices],
      0, 1)
  return ParticleTrajectory(jax.tree.map(pick, outs), jnp.max(final, axis=1),
                            log_means.sum(0))


def particle_filter(config: apdr.APDRConfig, params, images: jax.Array,
                    rng: jax.Array, rho: jax.Array, num_particles: int, *,
                    gates: jax.Array | None = None,
                    with_canvas: bool = False) -> ParticleTrajectory:
  """APDR's frames under `smc`: K particles per sequence, resampled per frame.

  With `num_particles=1` this is `apdr.log_weight_terms` with the same key
  (the same samples; `log_weight == log_marginal == terms.sum(-1)`).

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rng: a key (one per frame is folded in, as `log_weight_terms` does).
    rho: scalar, the discovery prior's probability of one more object.
    num_particles: K.
    gates: optional `[batch, T, 4*lstm]` from `apdr.image_gates`.
    with_canvas: also return the kept trajectory's reconstructions.

  Returns:
    `ParticleTrajectory` with `frames` an `apdr.FrameOutputs`.
  """
  batch = images.shape[0]
  if gates is None:
    gates = apdr.image_gates(config, params, images)

  def step_fn(carry, inp, key):
    image, gate = inp
    carry, out = apdr.frame_step(config, params, carry, image, gate, key, rho,
                                 with_canvas=with_canvas)
    return carry, out.terms.sum(-1), out

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  initial = apdr.initial_carry(config, params, batch * num_particles)
  return smc(step_fn, initial, (swap(images), swap(gates)), rng, batch,
             num_particles)
