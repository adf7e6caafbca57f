"""What APDR carries from frame to frame: the objects, the temporal state and
the next id; and what the propagation phase hands to the rest of a frame."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import networks
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.networks import APDRNetworks
from apdr_jax.apdr.networks import call


class Objects(NamedTuple):
  """The objects of one frame, compacted to the front of `N` slots.

  Attributes:
    z_where: `[batch, N, 3]`.
    z_what: `[batch, N, D]`.
    presence: `[batch, N]` in {0, 1}, a prefix of ones.
    ids: `[batch, N]` int32 persistent object ids, -1 where absent.
    prior_state: each object's prior-RNN state, `[batch, N, hidden]` each.
    velocity: `[batch, N, 3]`, each object's last change of position
      `(0, dx, dy)` (0 for an object discovered in this frame).
  """
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  ids: jax.Array
  prior_state: networks.LSTMState
  velocity: jax.Array


class Carry(NamedTuple):
  """What frame `t` hands to frame `t + 1`.

  Attributes:
    objects: the frame's `Objects`.
    temporal: the temporal state `h^q`, `[batch, hidden]` each.
    next_id: `[batch]` int32, the id the next discovered object gets.
  """
  objects: Objects
  temporal: networks.LSTMState
  next_id: jax.Array


def initial_carry(config: APDRConfig, params, batch: int) -> Carry:
  """No objects, learned initial temporal state, ids from 0."""
  n, d = config.num_slots, config.air.z_what_dim
  neutral = jnp.array([config.air.scale_prior_mean, 0.0, 0.0])
  objects = Objects(
      z_where=jnp.broadcast_to(neutral, (batch, n, 3)), z_what=jnp.zeros((batch, n, d)),
      presence=jnp.zeros((batch, n)), ids=jnp.full((batch, n), -1, jnp.int32),
      prior_state=call(config, params, APDRNetworks.prior_initial, (batch, n)),
      velocity=jnp.zeros((batch, n, 3)))
  return Carry(objects,
               call(config, params, APDRNetworks.temporal_initial, batch),
               jnp.zeros((batch,), jnp.int32))


class Propagated(NamedTuple):
  """The propagation phase's samples and log-probabilities, `[batch, N, ...]`.

  `active` marks the slots that held an object in the previous frame (a
  survival decision was taken); `presence` is the survival bit `b^P`.
  """
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  active: jax.Array
  log_q_presence: jax.Array
  log_q_z: jax.Array
  log_p_presence: jax.Array
  log_p_z: jax.Array
  baseline: jax.Array
  relation: networks.LSTMState  # after the last object: h^{P, k_t}
  prior_state: networks.LSTMState  # h^{prior}_t of each previous object
  # Survival probabilities, q's (before any warm-up floor) and the prior's.
  q_survival: jax.Array | None = None
  prior_survival: jax.Array | None = None
  # `[batch, H, W]`, every propagated object's drawing, where the scan over
  # objects already drew it (`propagation_input="residual"`); else None.
  canvas: jax.Array | None = None


def clean(config: APDRConfig, objects: Objects) -> Objects:
  """Puts neutral latents (the prior mean) into absent slots.

  Absent slots carry whatever was compacted behind the present ones; a
  glimpse taken at a scale near 0 would be non-finite, and a mask multiplied
  with NaN is still NaN. `where` also stops their gradients.
  """
  a = config.air
  present = objects.presence[..., None] > 0
  neutral = jnp.array([a.scale_prior_mean, 0.0, 0.0])
  return objects._replace(
      z_where=jnp.where(present, objects.z_where, neutral),
      z_what=jnp.where(present, objects.z_what, 0.0))
