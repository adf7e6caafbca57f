"""Predicting future frames: infer the observed frames, roll the prior on."""

import functools

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import distributions as dist
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.frame import compact
from apdr_jax.apdr.frame import frame_step
from apdr_jax.apdr.networks import APDRNetworks
from apdr_jax.apdr.networks import call
from apdr_jax.apdr.propagation import ink_visibility
from apdr_jax.apdr.propagation import prior_where_offset
from apdr_jax.apdr.sequence import image_gates
from apdr_jax.apdr.state import Carry
from apdr_jax.apdr.state import Propagated
from apdr_jax.apdr.state import initial_carry


def predict(config: APDRConfig, params, images: jax.Array, num_future: int,
            rng: jax.Array, rho: jax.Array, deterministic: bool = True):
  """Infers the observed frames, then rolls the prior forward `num_future`.

  Every object propagates through its prior RNN (survival and transition; the
  means when `deterministic`), and new objects come from the discovery prior
  (AIR's prior, truncated at `N - k_t`).

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T0, H, W]`, the conditioning frames.
    num_future: frames to predict.
    rng: a key.
    rho: the discovery prior's ρ.
    deterministic: use means and `survival > 0.5` instead of samples.

  Returns:
    dict: `canvas [batch, num_future, H, W]` (the mean of p(x | z)),
    `z_where [batch, num_future, N, 3]`, `presence`, `ids` `[batch,
    num_future, N]`.
  """
  a = config.air
  batch, observed = images.shape[:2]
  infer_key, future_key = jax.random.split(rng)
  gates = image_gates(config, params, images)

  def observe(carry, inputs):
    image, gate, index = inputs
    carry, _ = frame_step(config, params, carry, image, gate,
                          jax.random.fold_in(infer_key, index), rho,
                          deterministic)
    return carry, None

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  carry, _ = jax.lax.scan(observe, initial_carry(config, params, batch),
                          (swap(images), swap(gates), jnp.arange(observed)))

  def imagine(objects_next_id, key):
    objects, next_id = objects_next_id
    keys = jax.random.split(key, 5)
    net = functools.partial(call, config, params)
    state = net(APDRNetworks.prior_step, objects.z_where, objects.z_what,
                 objects.prior_state)
    survival, (where_loc, where_scale), (what_loc, what_scale) = net(
        APDRNetworks.prior_heads, state.hidden,
        prior_where_offset(config, objects), objects.z_what)
    survival = survival * ink_visibility(config, params, objects)
    if deterministic:
      alive = (survival > 0.5).astype(survival.dtype) * objects.presence
      z_where, z_what = where_loc, what_loc
    else:
      alive = dist.bernoulli_sample(keys[0], survival) * objects.presence
      z_where = dist.normal_sample(keys[1], where_loc, where_scale)
      z_what = dist.normal_sample(keys[2], what_loc, what_scale)
    # Discovery prior: Bernoulli(rho) per free slot until the first zero.
    free = config.num_slots - alive.sum(-1)
    born = jnp.cumprod(jax.random.bernoulli(keys[3], rho, alive.shape), 1)
    born = born * (jnp.arange(config.num_slots)[None] < free[:, None])
    if deterministic:
      born = jnp.zeros_like(born)
    _, new_where, new_what, _ = air.sample_prior(a, params["air"], keys[4],
                                                 batch, 1.0)
    prop = Propagated(z_where, z_what, alive, objects.presence, *(
        (jnp.zeros_like(alive),) * 5), None, state)
    disc = air.Slots(new_where, new_what, born.astype(alive.dtype),
                     *([None] * 8))
    carry_like = Carry(objects, None, next_id)
    new = compact(config, params, carry_like, prop, disc)
    canvas = air.composite(a, air.render_slots(a, params["air"], air.Slots(
        new.z_where, new.z_what, new.presence, *([None] * 8))))
    next_id = next_id + born.sum(-1).astype(jnp.int32)
    return (new, next_id), (canvas, new.z_where, new.presence, new.ids)

  _, (canvas, z_where, presence, ids) = jax.lax.scan(
      imagine, (carry.objects, carry.next_id),
      jax.random.split(future_key, num_future))
  return dict(canvas=swap(canvas), z_where=swap(z_where),
              presence=swap(presence), ids=swap(ids))
