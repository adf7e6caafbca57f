"""One frame of APDR (Algorithm 1): propagate, discover with AIR, render,
score, compact; its log-weight split per decision (DESIGN §3.3)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import background as background_lib
from apdr_jax import glimpse
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.networks import APDRNetworks
from apdr_jax.apdr.networks import call
from apdr_jax.apdr.propagation import propagate
from apdr_jax.apdr.propagation import residual
from apdr_jax.apdr.state import Carry
from apdr_jax.apdr.state import Objects
from apdr_jax.apdr.state import Propagated
from apdr_jax.apdr.state import clean


def compact(config: APDRConfig, params, carry: Carry, prop: Propagated,
             disc: air.Slots) -> Objects:
  """Present objects to the front, propagated first, each in a stable order.

  Propagated objects keep their ids and prior states; discovered ones get
  `next_id, next_id + 1, ...` and the prior RNN's learned initial state.
  """
  batch, n = prop.presence.shape
  presence = jnp.concatenate([prop.presence, disc.presence], 1)  # [B, 2N]
  new_ids = carry.next_id[:, None] + jnp.arange(n, dtype=jnp.int32)[None]
  ids = jnp.concatenate([carry.objects.ids, new_ids], 1)
  fresh = call(config, params, APDRNetworks.prior_initial, (batch, n))
  prior = jax.tree.map(lambda p, f: jnp.concatenate([p, f], 1),
                       prop.prior_state, fresh)
  # Stable: among present slots the order is kept (k_t + n_t <= N, so no
  # present object is ever cut off).
  order = jnp.argsort(1.0 - presence, axis=1, stable=True)[:, :n]
  take = lambda x: jnp.take_along_axis(
      x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
  kept = take(presence)
  # A propagated object's displacement; a discovered one has none yet. Only
  # the position moves with it: digits keep their size, and extrapolating a
  # change of scale made boxes grow or shrink frame after frame (measured).
  moved = (prop.z_where - carry.objects.z_where) * prop.presence[..., None]
  moved = moved.at[..., 0].set(0.0)
  velocity = jnp.concatenate([moved, jnp.zeros_like(disc.z_where)], 1)
  return Objects(
      z_where=take(jnp.concatenate([prop.z_where, disc.z_where], 1)),
      z_what=take(jnp.concatenate([prop.z_what, disc.z_what], 1)),
      presence=kept,
      ids=jnp.where(kept > 0, take(ids), -1),
      prior_state=jax.tree.map(take, prior),
      velocity=jnp.where(kept[..., None] > 0, take(velocity), 0.0))


class FrameOutputs(NamedTuple):
  """One frame's log-weight terms and what evaluation reads, `[batch, ...]`.

  Attributes:
    terms: `[batch, 2N + 1]`: per propagation slot and per discovery slot
      `log p - log q` of its decision and latents, then `log p(x_t | z_t)`
      (plus the background latent's `log p - log q`, if it has one).
    score_log_q: `[batch, 2N + 1]`, log q of each presence decision (0 for
      the likelihood column).
    baseline: `[batch, 2N + 1]`, NVIL's baseline per decision.
    log_likelihood: `[batch]`.
    kl: `[batch]`, `log q - log p` of the frame's latents.
    z_where, z_what, presence, ids: the frame's compacted objects
      (`[batch, N, 3]`, `[batch, N, D]`, `[batch, N]`, `[batch, N]`).
    num_propagated: `[batch]`, `k_t`.
    num_discovered: `[batch]`, `n_t`.
    canvas: `[batch, H, W]` or None, the reconstruction (`air.composite`,
      over the frame's background with `model.background`).
    q_survival: `[batch, N]`, q's survival probability of each previous
      object (before a warm-up floor; 0 for empty slots).
    prior_survival: `[batch, N]`, the prior's (0 for empty slots).
    log_joint: `[batch]`, `log p(x_t, z_t | z_{<t})`: the likelihood and
      every prior term of the frame, without q (what `search_modes`
      maximises).
    log_q: `[batch]`, `log q(z_t | x_t, past)` of every decision and latent
      of the frame.
  """
  terms: jax.Array
  score_log_q: jax.Array
  baseline: jax.Array
  log_likelihood: jax.Array
  kl: jax.Array
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  ids: jax.Array
  num_propagated: jax.Array
  num_discovered: jax.Array
  canvas: jax.Array | None
  q_survival: jax.Array
  prior_survival: jax.Array
  log_joint: jax.Array
  log_q: jax.Array


def frame_step(config: APDRConfig, params, carry: Carry, image: jax.Array,
               image_gates: jax.Array, rng: jax.Array, rho: jax.Array,
               deterministic: bool = False, with_canvas: bool = False,
               min_survival: jax.Array | float = 0.0,
               keep: jax.Array | None = None,
               detach_samples: bool = False):
  """One frame: propagate, discover, render, score, compact (Algorithm 1).

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    carry: the previous frame's `Carry`.
    image: `[batch, H, W]`.
    image_gates: `[batch, 4*lstm]`, AIR's image gates of this frame (unused,
      and may be None, when discovery looks at the residual).
    rng: a key.
    rho: the discovery prior's probability of one more object.
    deterministic: posterior modes instead of samples.
    with_canvas: also return the reconstruction.
    min_survival: floor on q's survival probability (see `propagate`).
    keep: optional `[batch, N]`, objects forced to be forgotten where 0 (see
      `propagate`).
    detach_samples: samples without gradient (`air.infer`; RWS).

  Returns:
    `(new Carry, FrameOutputs)`.
  """
  a = config.air
  prop_key, disc_key = jax.random.split(rng)
  carry = carry._replace(objects=clean(config, carry.objects))
  prev = carry.objects
  with jax.named_scope("temporal"):
    temporal = call(config, params, APDRNetworks.temporal_step, prev.z_where,
                     prev.z_what, prev.presence, carry.temporal)
  with jax.named_scope("propagation"):
    prop = propagate(config, params, image, carry, temporal, prop_key,
                     deterministic, min_survival, keep, detach_samples)
  num_propagated = prop.presence.sum(-1)
  max_steps = config.num_slots - num_propagated.astype(jnp.int32)
  render = lambda z_what, z_where, presence: glimpse.render_sum(
      air.decode(a, params["air"], z_what), z_where, presence, a.canvas_size,
      a.canvas_size)
  with jax.named_scope("propagation_render"):
    prop_canvas = (prop.canvas if prop.canvas is not None else
                   render(prop.z_what, prop.z_where, prop.presence))
  with jax.named_scope("discovery"):
    if config.discovery_input == "residual":
      # Under RWS the decoder's drawing is a constant to q (see propagate).
      drawn = (jax.lax.stop_gradient(prop_canvas) if detach_samples
               else prop_canvas)
      seen = residual(image, drawn, config.residual_gain)
      image_gates = air.image_gates(a, params["air"], seen)
    else:
      seen = image
    disc = air.infer(a, params["air"], seen, disc_key, image_gates=image_gates,
                     context=prop.relation.hidden, max_steps=max_steps,
                     deterministic=deterministic,
                     detach_samples=detach_samples)
    disc_log_p_presence, disc_log_p_z = air.prior_log_probs(a, disc, rho)
  with jax.named_scope("likelihood"):
    # Every present object of both phases (absent slots weigh 0).
    canvas = air.composite(a, prop_canvas + render(disc.z_what, disc.z_where,
                                                    disc.presence))
    # The frame's background (`model.background`): from discovery's last
    # LSTM output, which has read the frame's residual and, through its
    # initial state and context, the propagated objects and the past.
    back = air.infer_background(a, params["air"], disc,
                                jax.random.fold_in(disc_key, a.num_slots),
                                deterministic=deterministic,
                                detach_samples=detach_samples)
    log_lik = air.log_likelihood(a, image, canvas,
                                 None if back is None else back.image)
  prop_kl = (prop.log_q_presence + prop.log_q_z - prop.log_p_presence -
             prop.log_p_z)
  disc_kl = (disc.log_q_presence + disc.log_q_z - disc_log_p_presence -
             disc_log_p_z)
  last_column, back_log_p, back_log_q = log_lik, 0.0, 0.0
  if back is not None:
    canvas = background_lib.compose(a.background_compose, canvas, back.image)
    last_column = log_lik + back.log_p_minus_log_q
    back_log_q = back.log_q
    back_log_p = back.log_p_minus_log_q + back.log_q
  terms = jnp.concatenate([-prop_kl, -disc_kl, last_column[:, None]], 1)
  score_log_q = jnp.concatenate([prop.log_q_presence, disc.log_q_presence,
                                 jnp.zeros_like(log_lik)[:, None]], 1)
  disc_baseline = air.baseline_values(a, params["air"], disc.hidden)
  baseline = jnp.concatenate([prop.baseline, disc_baseline,
                              jnp.zeros_like(log_lik)[:, None]], 1)
  with jax.named_scope("compact"):
    objects = compact(config, params, carry, prop, disc)
  num_discovered = disc.presence.sum(-1)
  new_carry = Carry(objects, temporal,
                    carry.next_id + num_discovered.astype(jnp.int32))
  outputs = FrameOutputs(
      terms, score_log_q, baseline, log_lik,
      prop_kl.sum(-1) + disc_kl.sum(-1) + back_log_q - back_log_p,
      objects.z_where, objects.z_what, objects.presence,
      objects.ids, num_propagated, num_discovered,
      canvas if with_canvas else None, prop.q_survival, prop.prior_survival,
      log_lik + back_log_p + (prop.log_p_presence + prop.log_p_z +
                              disc_log_p_presence + disc_log_p_z).sum(-1),
      (prop.log_q_presence + prop.log_q_z + disc.log_q_presence +
       disc.log_q_z).sum(-1) + back_log_q)
  return new_carry, outputs
