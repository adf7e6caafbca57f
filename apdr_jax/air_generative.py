"""AIR's generative model p (notes §2, DESIGN §3.1): the prior, the decoder,
the likelihood, and scenes sampled from it.

q, the inference network, and the log-weight that joins the two are in
`apdr_jax.air`, which re-exports these names. Functions that take `slots`
read only its latents and masks (`z_where`, `z_what`, `presence`, `active`,
`presence_logit`), so the relaxed and discrete samples go through alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from apdr_jax import air_networks
from apdr_jax import background as background_lib
from apdr_jax import distributions as dist
from apdr_jax import glimpse
from apdr_jax import relaxed
from apdr_jax.air_networks import AIRConfig
from apdr_jax.air_networks import AIRNetworks

_call = air_networks.call


def where_prior(config: AIRConfig):
  """The prior's `(loc, scale)` of `z_where = (s, x, y)`, `[3]` each."""
  loc = jnp.array([config.scale_prior_mean, 0.0, 0.0])
  scale = jnp.array([config.scale_prior_std, config.shift_prior_std,
                     config.shift_prior_std])
  return loc, scale


def prior_log_probs(config: AIRConfig, slots, rho: jax.Array,
                    temperature: jax.Array | None = None):
  """Log-prior terms of each slot, `[batch, N]` each.

  With a `temperature` (slots sampled relaxed at it), the presence term is
  the density of `slots.presence_logit` under the relaxation of
  Bernoulli(rho) at the same temperature, weighted by `slots.active`.

  Returns:
    (log p of the presence decisions, log p of `z_where` and `z_what`), both 0
    where the slot is inactive or absent (weighted by the relaxed presence
    when relaxed). Summed over slots, the discrete presence term is the
    truncated-geometric log p(n) of DESIGN §3.1.
  """
  if temperature is None:
    log_p_presence = slots.active * dist.bernoulli_log_prob(slots.presence, rho)
  else:
    log_p_presence = slots.active * relaxed.logit_log_prob(
        slots.presence_logit, relaxed.logit(rho), temperature)
  where_loc, where_scale = where_prior(config)
  log_p_z = (dist.normal_log_prob(slots.z_where, where_loc, where_scale).sum(-1)
             + dist.normal_log_prob(slots.z_what, 0.0, 1.0).sum(-1))
  return log_p_presence, slots.presence * log_p_z


def decode(config: AIRConfig, params, z_what: jax.Array) -> jax.Array:
  """`[..., D] -> [..., g, g]` decoded glimpses."""
  return _call(config, params, AIRNetworks.decode, z_what)


def render_slots(config: AIRConfig, params, slots) -> jax.Array:
  """The canvas: every present slot's decoded glimpse rendered and summed.

  Returns:
    `[batch, H, W]`.
  """
  size = config.canvas_size
  return glimpse.render_sum(decode(config, params, slots.z_what),
                            slots.z_where, slots.presence, size, size)


def composite(config: AIRConfig, drawings_sum: jax.Array) -> jax.Array:
  """The mean of p(x | z) from the objects' summed drawings `[..., H, W]`:
  the sum itself (`canvas='sum'`, the notes) or min(sum, 1) (`'clip'`, the
  way the data compose overlapping digits). Idempotent."""
  if config.canvas == "clip":
    return jnp.minimum(drawings_sum, 1.0)
  return drawings_sum


def log_likelihood(config: AIRConfig, images: jax.Array,
                   canvas: jax.Array,
                   background: jax.Array | None = None) -> jax.Array:
  """log N(x | mean, std^2) summed over pixels, `[batch]`; `canvas` is the
  objects' summed drawings (or already their composite), and the mean is
  their composite, over `background [batch, H, W]` when one is given."""
  mean = composite(config, canvas)
  if background is not None:
    mean = background_lib.compose(config.background_compose, mean, background)
  return dist.normal_log_prob(images, mean,
                              config.likelihood_std).sum((-2, -1))


def sample_prior(config: AIRConfig, params, rng: jax.Array, batch_size: int,
                 rho: float):
  """Scenes from the generative model: n, then each object's latents, rendered.

  Args:
    config: the architecture.
    params: `AIRNetworks` parameters (only the decoder is used).
    rng: a key.
    batch_size: how many scenes.
    rho: the presence prior's probability of one more object.

  Returns:
    (presence `[batch, N]`, z_where `[batch, N, 3]`, z_what `[batch, N, D]`,
    canvas `[batch, H, W]`, the mean of p(x | z)). With a background
    latent, the objects are composed over `g(z_bg)`, `z_bg` from its prior;
    a background without a latent (`b = g(h^N)`) needs an image to infer
    it, so the canvas then holds the objects only.
  """
  n_key, where_key, what_key = jax.random.split(rng, 3)
  shape = (batch_size, config.num_slots)
  # Presence: Bernoulli(rho) per slot until the first zero (DESIGN §3.1).
  presence = jnp.cumprod(jax.random.bernoulli(n_key, rho, shape), axis=1)
  presence = presence.astype(jnp.float32)
  where_loc, where_scale = where_prior(config)
  z_where = dist.normal_sample(where_key, jnp.broadcast_to(where_loc, shape + (3,)),
                               where_scale)
  z_what = jax.random.normal(what_key, shape + (config.z_what_dim,))
  size = config.canvas_size
  canvas = composite(config, glimpse.render_sum(
      decode(config, params, z_what), z_where, presence, size, size))
  if config.background != "none" and config.background_latent_dim:
    z_background = jax.random.normal(jax.random.fold_in(rng, 3), (
        batch_size, config.background_latent_dim))
    canvas = background_lib.compose(
        config.background_compose, canvas,
        _call(config, params, AIRNetworks.background_step, "decode",
              z_background))
  return presence, z_where, z_what, canvas


def presence_rho(step: jax.Array, start: float, end: float,
                 anneal_steps: int) -> jax.Array:
  """ρ on a log-linear schedule from `start` to `end` over `anneal_steps`."""
  frac = jnp.clip(step / max(anneal_steps, 1), 0.0, 1.0)
  return jnp.exp((1.0 - frac) * math.log(start) + frac * math.log(end))
