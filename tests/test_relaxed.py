"""The Concrete relaxation: its density against closed forms, its limit as the
temperature goes to 0, its pathwise gradient against quadrature, and AIR's
relaxed presence."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from apdr_jax import air
from apdr_jax import relaxed

LOGITS = np.array([-2.0, -0.3, 0.0, 1.5], np.float32)


def _concrete_log_density(c, logit, temperature):
  """Maddison et al. (2017), eq. 4 for n = 2: the binary Concrete density of
  `c in (0, 1)`, with `alpha = exp(logit)`."""
  lam, alpha = temperature, np.exp(logit)
  return (np.log(lam) + np.log(alpha) + (-lam - 1) * (np.log(c) + np.log1p(-c))
          - 2 * np.log(alpha * c ** -lam + (1 - c) ** -lam))


@pytest.mark.parametrize("temperature", [0.3, 0.66, 2.0])
def test_logit_density_is_the_binary_concrete_density(temperature):
  y = np.linspace(-4, 4, 9, dtype=np.float32)[:, None]
  c = 1 / (1 + np.exp(-y.astype(np.float64)))
  got = np.asarray(relaxed.logit_log_prob(jnp.asarray(y), LOGITS, temperature))
  # The density of y = logit(c) is that of c times the Jacobian c (1 - c).
  want = (_concrete_log_density(c, LOGITS.astype(np.float64), temperature)
          + np.log(c) + np.log1p(-c))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_logit_density_integrates_to_one(temperature):
  y = np.linspace(-300, 300, 600_001)  # the tails beyond are below 1e-30
  density = np.exp(np.asarray(
      relaxed.logit_log_prob(jnp.asarray(y, jnp.float32)[:, None], LOGITS,
                             temperature), np.float64))
  np.testing.assert_allclose(integrate.simpson(density, x=y, axis=0), 1.0,
                             rtol=1e-5)


def test_the_relaxed_bit_is_one_with_the_bernoulli_probability_at_any_temperature():
  keys = jax.random.split(jax.random.key(0), 3)
  num = 200_000
  for key, temperature in zip(keys, (0.1, 0.5, 2.0)):
    y = relaxed.sample_logit(key, jnp.broadcast_to(LOGITS, (num, 4)),
                             temperature)
    fraction = np.asarray((y > 0).mean(0))
    prob = 1 / (1 + np.exp(-LOGITS))
    stderr = np.sqrt(prob * (1 - prob) / num)
    np.testing.assert_array_less(np.abs(fraction - prob), 4 * stderr)


def test_samples_go_to_zero_and_one_as_the_temperature_goes_to_zero():
  num = 100_000
  inside = []
  for temperature in (1.0, 0.3, 0.1, 0.01):
    y = relaxed.sample_logit(jax.random.key(1),
                             jnp.broadcast_to(LOGITS, (num, 4)), temperature)
    c = jax.nn.sigmoid(y)
    inside.append(float(((c > 0.01) & (c < 0.99)).mean()))
  assert inside == sorted(inside, reverse=True), inside
  assert inside[-1] < 0.02 and inside[0] > 0.5, inside


def test_pathwise_gradient_is_unbiased_against_quadrature():
  """d/da E[sigmoid(y)] by the reparameterised samples, against the
  derivative of the expectation computed by quadrature."""
  temperature, logit, num = 0.5, 0.4, 400_000

  def expectation(a):  # in float64, from the Logistic's closed form
    def integrand(y):
      u = a - temperature * y
      log_density = np.log(temperature) + u - 2 * np.logaddexp(0, u)
      return np.exp(log_density) * 0.5 * (1 + np.tanh(y / 2))  # sigmoid
    return integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-12)[0]
  h = 1e-3
  exact = (expectation(logit + h) - expectation(logit - h)) / (2 * h)
  grads = jax.vmap(jax.grad(lambda a, k: jax.nn.sigmoid(
      relaxed.sample_logit(k, a, temperature))), in_axes=(None, 0))(
          jnp.float32(logit), jax.random.split(jax.random.key(2), num))
  stderr = float(grads.std()) / np.sqrt(num)
  assert abs(float(grads.mean()) - exact) < 4 * stderr, (grads.mean(), exact)


def test_temperature_schedule():
  assert float(relaxed.temperature_at(0, 1.0, 0.1, 0)) == 1.0
  np.testing.assert_allclose(relaxed.temperature_at(50, 1.0, 0.01, 100), 0.1,
                             rtol=1e-5)
  np.testing.assert_allclose(relaxed.temperature_at(500, 1.0, 0.01, 100), 0.01,
                             rtol=1e-5)


# AIR's relaxed presence.

_CONFIG = air.AIRConfig(canvas_size=20, num_slots=3, glimpse_size=8,
                        z_what_dim=4, lstm_size=16, mlp_size=16,
                        presence_init=0.6)


@pytest.fixture(scope="module")
def air_inputs():
  params = air.init_params(_CONFIG, jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (64, 20, 20))
  return params, images


def test_relaxed_presence_is_a_non_increasing_product_in_0_1(air_inputs):
  params, images = air_inputs
  slots = air.infer(_CONFIG, params, images, jax.random.key(3),
                    temperature=0.5)
  chex.assert_shape(slots.presence_logit, (64, 3))
  presence = np.asarray(slots.presence)
  assert np.all((presence >= 0) & (presence <= 1))
  assert np.all(np.diff(presence, axis=1) <= 1e-7)
  np.testing.assert_allclose(
      presence, np.cumprod(np.asarray(jax.nn.sigmoid(slots.presence_logit)), 1),
      rtol=1e-5, atol=1e-7)
  # Strictly between 0 and 1 at this temperature: not a thresholded bit.
  assert np.mean((presence > 0.01) & (presence < 0.99)) > 0.1
  np.testing.assert_allclose(slots.active[:, 1:], slots.presence[:, :-1])


def test_relaxed_terms_tend_to_the_discrete_gating(air_inputs):
  """At a tiny temperature the relaxed presence is a bit, and the slots'
  continuous terms and the likelihood equal those of the discrete model
  with that bit."""
  params, images = air_inputs
  rho = 0.4
  slots = air.infer(_CONFIG, params, images, jax.random.key(4),
                    temperature=1e-4)
  bits = jnp.round(slots.presence)
  np.testing.assert_allclose(slots.presence, bits, atol=1e-3)
  assert 0.2 < float(bits.mean()) < 0.8  # both outcomes occur
  hard = slots._replace(presence=bits)
  _, relaxed_z = air.prior_log_probs(_CONFIG, slots, rho, 1e-4)
  _, hard_z = air.prior_log_probs(_CONFIG, hard, rho)
  np.testing.assert_allclose(relaxed_z, hard_z, rtol=1e-3, atol=1e-2)
  like = lambda s: air.log_likelihood(_CONFIG, images,
                                      air.render_slots(_CONFIG, params, s))
  np.testing.assert_allclose(like(slots), like(hard), rtol=1e-4)


def test_the_relaxed_objective_reaches_q_presence_through_its_path(air_inputs):
  """No score function: the presence head's gradient is the pathwise one,
  through the drawings and the later steps; it is zero when presence is
  discrete and only the terms (not their score) are differentiated."""
  params, images = air_inputs

  def head_grad(temperature):
    def loss(p):
      out = air.log_weight_terms(_CONFIG, p, images, jax.random.key(5), 0.4,
                                 temperature=temperature)
      return out.log_likelihood.mean()
    return jax.jit(jax.grad(loss))(params)["presence_head"]["kernel"]
  assert float(jnp.abs(head_grad(0.5)).sum()) > 0
  assert float(jnp.abs(head_grad(None)).sum()) == 0


def test_relaxed_is_for_training_only(air_inputs):
  params, images = air_inputs
  with pytest.raises(ValueError, match="training only"):
    air.infer(_CONFIG, params, images, jax.random.key(0), temperature=0.5,
              deterministic=True)
