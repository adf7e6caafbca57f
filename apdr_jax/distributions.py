"""Log densities and samplers used by the models (a leaf module: JAX only).

Every log-density here is tested against `jax.scipy.stats` or a closed form in
`tests/test_distributions.py`.
"""

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_log_prob(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Elementwise log N(x | loc, scale^2)."""
  z = (x - loc) / scale
  return -0.5 * z * z - jnp.log(scale) - _HALF_LOG_2PI


def normal_sample(rng: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Reparameterised sample `loc + scale * eps`."""
  return loc + scale * jax.random.normal(rng, loc.shape, loc.dtype)


def bernoulli_log_prob(value: jax.Array, prob: jax.Array,
                       eps: float = 1e-6) -> jax.Array:
  """Elementwise log Bernoulli(value | prob) for value in {0, 1}.

  `prob` is clipped to `[eps, 1 - eps]` so that a saturated network gives a
  large finite penalty instead of `-inf`.
  """
  prob = jnp.clip(prob, eps, 1.0 - eps)
  return value * jnp.log(prob) + (1.0 - value) * jnp.log1p(-prob)


def bernoulli_sample(rng: jax.Array, prob: jax.Array) -> jax.Array:
  """A float {0., 1.} sample; it carries no gradient (score-function only)."""
  return jax.random.bernoulli(rng, jax.lax.stop_gradient(prob)).astype(
      prob.dtype)


def truncated_geometric_log_prob(count: jax.Array, rho: jax.Array,
                                 max_count: jax.Array) -> jax.Array:
  """log p(n) for AIR's presence prior (DESIGN §3.1), in closed form.

  `p(n) = rho^n (1 - rho)` for `n < max_count` and `p(max_count) = rho^max_count`:
  Bernoulli(rho) presence variables until the first zero, with no stop sampled
  after `max_count` objects.
  """
  log_stop = jnp.where(count < max_count, jnp.log1p(-rho), 0.0)
  return count * jnp.log(rho) + log_stop
