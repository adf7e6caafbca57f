"""The Concrete (Gumbel-sigmoid) relaxation of a presence bit, in logit space.

A Bernoulli with logit `a` is relaxed, at temperature `lam > 0`, into

    y = (a + L) / lam,   L ~ Logistic(0, 1),   c = sigmoid(y) in (0, 1),

(Maddison et al., 2017, the binary Concrete; Jang et al., 2017). `y` is a
Logistic with location `a / lam` and scale `1 / lam`: reparameterised, with a
closed-form density. For any `lam`, `P(c > 1/2) = sigmoid(a)`, the Bernoulli's
probability of 1, and as `lam -> 0` the samples `c` go to `{0, 1}`. The KL of
the relaxed variable is estimated from one sample in logit space,
`log q(y) - log p(y)` with both densities Logistic (the density of `c` would
need the Jacobian `c (1 - c)`, which cancels in the ratio but loses precision
when `c` saturates).

The distribution is NumPyro's `Logistic` (`numpyro.distributions`): pure JAX,
reparameterised, and maintained; TensorFlow Probability's JAX substrate, the
other candidate, does not import with the pinned JAX (WORKSPACE.md).
"""

import jax
import jax.numpy as jnp


def _logistic(logits: jax.Array, temperature: jax.Array):
  # Imported here: NumPyro takes most of a second to import, and only runs
  # that train with `estimator='concrete'` need it.
  from numpyro import distributions as numpyro_dist  # pylint: disable=g-import-not-at-top
  return numpyro_dist.Logistic(logits / temperature, 1.0 / temperature)


def logit(prob: jax.Array, eps: float = 1e-6) -> jax.Array:
  """`log p - log(1 - p)` with `p` clipped to `[eps, 1 - eps]` (as
  `distributions.bernoulli_log_prob` clips it)."""
  prob = jnp.clip(prob, eps, 1.0 - eps)
  return jnp.log(prob) - jnp.log1p(-prob)


def sample_logit(rng: jax.Array, logits: jax.Array,
                 temperature: jax.Array) -> jax.Array:
  """A reparameterised relaxed sample in logit space, `y`, shaped as `logits`.

  Its gradient reaches `logits` (and `temperature`); `sigmoid(y)` is the
  relaxed presence.
  """
  return _logistic(logits, temperature).rsample(rng)


def logit_log_prob(y: jax.Array, logits: jax.Array,
                   temperature: jax.Array) -> jax.Array:
  """Elementwise log density of `y` under the relaxation of Bernoulli(logits)."""
  return _logistic(logits, temperature).log_prob(y)


def temperature_at(step: jax.Array, start: float, end: float,
                   anneal_steps: int) -> jax.Array:
  """The temperature on a log-linear schedule from `start` to `end` over
  `anneal_steps` (constant `start` when `anneal_steps` is 0)."""
  if anneal_steps <= 0:
    return jnp.asarray(start, jnp.float32)
  frac = jnp.clip(step / anneal_steps, 0.0, 1.0)
  return jnp.exp((1.0 - frac) * jnp.log(start) + frac * jnp.log(end))
