"""REBAR and RELAX on a toy with several Bernoullis and a non-linear objective
whose exact gradient is known by enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from apdr_jax import rebar

LOGITS = jnp.array([0.3, -1.0, 1.2, -0.2])
WEIGHTS = jnp.array([0.3, 0.8, -0.5, 0.6])
ALL_BITS = jnp.asarray(list(itertools.product((0.0, 1.0), repeat=4)))  # [16, 4]


def objective(bits):
  """Non-linear in the bits, with interactions; defined on [0, 1]^4."""
  return ((bits @ WEIGHTS - 0.45) ** 2 + 0.5 * bits[..., 0] * bits[..., 2]
          - bits[..., 1] * bits[..., 3])


def exact_gradient(logits):
  def expectation(l):
    log_prob = rebar.bernoulli_log_prob(ALL_BITS, l).sum(-1)
    return jnp.sum(jnp.exp(log_prob) * objective(ALL_BITS))
  return jax.grad(expectation)(logits)


def _estimates(control_fn, num, seed, logits=LOGITS):
  """One gradient estimate per draw, `[num, 4]`."""
  def one(key):
    return jax.grad(lambda l: rebar.surrogate(
        objective, control_fn, l, rebar.sample(key, l)))(logits)
  return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), num))


def _reinforce(num, seed):
  def one(key):
    bits = rebar.sample(key, LOGITS).bits
    return jax.grad(lambda l: jax.lax.stop_gradient(objective(bits)) *
                    rebar.bernoulli_log_prob(bits, l).sum())(LOGITS)
  return jax.vmap(one)(jax.random.split(jax.random.key(seed), num))


def _assert_unbiased(estimates):
  exact = np.asarray(exact_gradient(LOGITS))
  mean = np.asarray(estimates.mean(0))
  stderr = np.asarray(estimates.std(0)) / np.sqrt(estimates.shape[0])
  np.testing.assert_array_less(np.abs(mean - exact), 4 * stderr)


def test_sample_bits_and_conditional_relaxation():
  num = 200_000
  draw = rebar.sample(jax.random.key(0), jnp.broadcast_to(LOGITS, (num, 4)))
  prob = np.asarray(jax.nn.sigmoid(LOGITS))
  stderr = np.sqrt(prob * (1 - prob) / num)
  np.testing.assert_array_less(np.abs(draw.bits.mean(0) - prob), 4 * stderr)
  # z~ lies on b's side of 0, and has z's marginal (same joint with b).
  np.testing.assert_array_equal(draw.z_tilde > 0, draw.bits > 0)
  np.testing.assert_array_equal(draw.z > 0, draw.bits > 0)
  for f in (jax.nn.sigmoid, lambda x: jnp.tanh(x / 3)):
    a, b = f(draw.z), f(draw.z_tilde)
    se = np.sqrt((a.var(0) + b.var(0)) / num)
    np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)), 4 * se)


def test_reinforce_reference_is_unbiased():
  _assert_unbiased(_reinforce(100_000, 1))


def test_rebar_is_unbiased_and_beats_reinforce():
  control = rebar.rebar_control(objective, 0.5, 1.0)
  estimates = _estimates(control, 100_000, 2)
  _assert_unbiased(estimates)
  rebar_var = float(estimates.var(0).sum())
  reinforce_var = float(_reinforce(100_000, 3).var(0).sum())
  assert rebar_var < 0.7 * reinforce_var, (rebar_var, reinforce_var)


def _relax_control(params):
  """REBAR's control variate plus a small network on the relaxed logits."""
  temperature = jnp.exp(params["log_temperature"])
  base = rebar.rebar_control(objective, temperature, params["scale"])
  def control(z):
    hidden = jnp.tanh(jnp.tanh(z / 4) @ params["w1"] + params["b1"])
    return base(z) + hidden @ params["w2"]
  return control


def _relax_params(key):
  k1, k2 = jax.random.split(key)
  return {"log_temperature": jnp.log(0.5), "scale": jnp.array(1.0),
          "w1": 0.5 * jax.random.normal(k1, (4, 8)), "b1": jnp.zeros(8),
          "w2": 0.5 * jax.random.normal(k2, (8,))}


def test_relax_is_unbiased_for_any_control():
  _assert_unbiased(_estimates(_relax_control(_relax_params(jax.random.key(4))),
                              100_000, 5))


def test_relax_variance_updates_lower_the_measured_variance():
  params = _relax_params(jax.random.key(6))
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, key):
    loss = lambda p: rebar.variance_loss(_estimates_traced(p, key))
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  def _estimates_traced(p, key):
    def one(k):
      return jax.grad(lambda l: rebar.surrogate(
          objective, _relax_control(p), l, rebar.sample(k, l)))(LOGITS)
    return jax.vmap(one)(jax.random.split(key, 256))

  before = float(_estimates(_relax_control(params), 50_000, 7).var(0).sum())
  for i in range(300):
    params, opt_state = step(params, opt_state, jax.random.key(100 + i))
  after_estimates = _estimates(_relax_control(params), 50_000, 7)
  after = float(after_estimates.var(0).sum())
  print(f"RELAX variance before {before:.4f}, after {after:.4f}")
  assert after < 0.7 * before, (before, after)
  _assert_unbiased(after_estimates)  # still unbiased after the training
