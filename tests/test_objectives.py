"""Estimators against exact gradients on a toy problem small enough to enumerate.

The toy is AIR's presence chain with two decisions: `b1 ~ Bern(sigmoid(t1))`,
then `b2 ~ Bern(sigmoid(t2))` only if `b1 = 1`. Its log-weight has three terms
in decision order (`terms_0` depends on b1, `terms_1` on b1 and b2, and a final
"likelihood" on the count and a continuous parameter `phi`), so the exact bound
and its gradient are sums over the three configurations (0,0), (1,0), (1,1).
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import objectives

CONFIGS = np.array([[0, 0], [1, 0], [1, 1]], np.float32)
RHO = 0.3


def toy_terms(params, presence):
  """Log-weight terms and score log q of one configuration.

  Args:
    params: dict with `theta [2]` (presence logits) and `phi` (scalar).
    presence: `[..., 2]` in {0, 1}.

  Returns:
    (terms `[..., 3]`, score_log_q `[..., 3]`).
  """
  b1, b2 = presence[..., 0], presence[..., 1]
  log_q = lambda b, logit: b * jax.nn.log_sigmoid(logit) + (
      1 - b) * jax.nn.log_sigmoid(-logit)
  log_p = lambda b: b * jnp.log(RHO) + (1 - b) * jnp.log1p(-RHO)
  q1 = log_q(b1, params["theta"][0])
  q2 = b1 * log_q(b2, params["theta"][1])  # inactive unless b1 = 1
  count = b1 + b2
  terms = jnp.stack([
      log_p(b1) - q1 + 0.5 * b1,
      b1 * log_p(b2) - q2 - 0.7 * b2,
      -(count - params["phi"]) ** 2 + 0.3 * params["phi"],
  ], -1)
  score = jnp.stack([q1, q2, jnp.zeros_like(q1)], -1)
  return terms, score


def config_log_prob(params, presence):
  return toy_terms(params, presence)[1].sum(-1)


def exact_elbo(params):
  terms, _ = toy_terms(params, jnp.asarray(CONFIGS))
  return jnp.sum(jnp.exp(config_log_prob(params, jnp.asarray(CONFIGS))) *
                 terms.sum(-1))


def exact_iwae(params, num_samples):
  """E over K iid configurations of log mean_k exp(w_k), by enumeration."""
  combos = jnp.asarray(list(itertools.product(range(3), repeat=num_samples)))
  presence = jnp.asarray(CONFIGS)[combos]  # [3^K, K, 2]
  terms, score = toy_terms(params, presence)
  log_prob = score.sum(-1).sum(-1)  # [3^K]
  bound = objectives.log_mean_exp(terms.sum(-1), axis=1)
  return jnp.sum(jnp.exp(log_prob) * bound)


def sample_presence(rng, params, shape):
  """Ancestral samples of the chain, `shape + [2]`, without gradient."""
  k1, k2 = jax.random.split(rng)
  theta = jax.lax.stop_gradient(params["theta"])
  b1 = jax.random.bernoulli(k1, jax.nn.sigmoid(theta[0]), shape)
  b2 = jax.random.bernoulli(k2, jax.nn.sigmoid(theta[1]), shape) & b1
  return jnp.stack([b1, b2], -1).astype(jnp.float32)


PARAMS = {"theta": jnp.array([0.4, -0.6]), "phi": jnp.array(0.8)}


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _assert_unbiased(per_sample_grads, exact):
  """Mean of the estimates within 4 standard errors of the exact gradient."""
  estimates = jax.vmap(_flat)(per_sample_grads)
  mean = estimates.mean(0)
  stderr = estimates.std(0) / np.sqrt(estimates.shape[0])
  np.testing.assert_array_less(np.abs(mean - _flat(exact)), 4 * stderr + 1e-3)


def test_reverse_cumsum():
  x = jnp.array([[1.0, 2.0, 3.0]])
  np.testing.assert_allclose(objectives.reverse_cumsum(x), [[6.0, 5.0, 3.0]])


def test_enumeration_sums_to_one():
  probs = jnp.exp(config_log_prob(PARAMS, jnp.asarray(CONFIGS)))
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("baseline_value,running_mean", [(0.0, 0.0),
                                                          (2.5, -1.0)])
def test_nvil_is_unbiased(baseline_value, running_mean):
  """Any baseline that ignores the decision leaves the gradient unbiased.

  The running variance is kept at 1: above 1, NVIL divides the score-function
  term by the running std (Mnih & Gregor's normalisation), which rescales that
  part of the gradient on purpose and so is not an unbiased estimate.
  """
  num = 20_000
  presence = sample_presence(jax.random.key(0), PARAMS, (num,))
  state = objectives.NVILState(jnp.full((3,), running_mean), jnp.full((3,), 1.0))

  def loss(params, one_presence):
    terms, score = toy_terms(params, one_presence[None])
    baseline = jnp.full_like(terms, baseline_value)
    return objectives.nvil(terms, score, baseline, state).loss

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(PARAMS, presence)
  # The surrogate is minus the bound.
  _assert_unbiased(jax.tree.map(jnp.negative, grads),
                   jax.grad(exact_elbo)(PARAMS))


def test_nvil_estimate_is_not_trivially_close():
  """The check above can fail: dropping the score term biases theta's gradient."""
  num = 20_000
  presence = sample_presence(jax.random.key(0), PARAMS, (num,))

  def pathwise_only(params, one_presence):
    terms, _ = toy_terms(params, one_presence[None])
    return -terms.sum()

  grads = jax.vmap(jax.grad(pathwise_only), in_axes=(None, 0))(PARAMS, presence)
  with pytest.raises(AssertionError):
    _assert_unbiased(jax.tree.map(jnp.negative, grads),
                     jax.grad(exact_elbo)(PARAMS))


@pytest.mark.parametrize("num_samples", [2, 3])
def test_vimco_is_unbiased(num_samples):
  num_groups = 20_000
  presence = sample_presence(jax.random.key(1), PARAMS,
                             (num_groups, num_samples))
  state = objectives.nvil_init(3)

  def loss(params, group):  # group: [K, 2]
    terms, score = toy_terms(params, group[:, None])  # [K, 1, 3]
    return objectives.vimco(terms, score, state).loss

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(PARAMS, presence)
  _assert_unbiased(jax.tree.map(jnp.negative, grads),
                   jax.grad(exact_iwae)(PARAMS, num_samples))


def test_vimco_bound_value_matches_enumeration():
  num_groups, num_samples = 20_000, 3
  presence = sample_presence(jax.random.key(2), PARAMS,
                             (num_groups, num_samples))
  terms, score = toy_terms(PARAMS, presence)  # [G, K, 3]
  surrogate = objectives.vimco(jnp.swapaxes(terms, 0, 1),
                               jnp.swapaxes(score, 0, 1), objectives.nvil_init(3))
  bounds = objectives.log_mean_exp(terms.sum(-1), axis=1)
  stderr = bounds.std() / np.sqrt(num_groups)
  assert abs(surrogate.bound - exact_iwae(PARAMS, num_samples)) < 4 * stderr


def _naive_vimco_signals(terms):
  """Loop version of `objectives.vimco_signals` for one batch element."""
  terms = np.asarray(terms, np.float64)  # [K, S]
  k, s = terms.shape
  w = terms.sum(-1)
  lme = lambda v: np.log(np.mean(np.exp(v - v.max()))) + v.max()
  out = np.zeros((k, s))
  for i in range(s):
    for j in range(k):
      fixed = terms[j, :i].sum()
      others = [terms[m, i:].sum() for m in range(k) if m != j]
      replaced = w.copy()
      replaced[j] = fixed + np.mean(others)
      out[j, i] = lme(w) - lme(replaced)
  return out


def test_vimco_signals_match_loops():
  terms = jax.random.normal(jax.random.key(3), (4, 2, 5)) * 5.0
  signals = objectives.vimco_signals(terms)
  chex.assert_shape(signals, (4, 2, 5))
  for b in range(2):
    np.testing.assert_allclose(signals[:, b], _naive_vimco_signals(terms[:, b]),
                               rtol=1e-4, atol=1e-4)


def test_vimco_signals_stable_when_one_sample_dominates():
  terms = jnp.array([[[0.0, 900.0]], [[0.0, -900.0]], [[0.0, -950.0]]])
  signals = objectives.vimco_signals(terms)
  assert np.all(np.isfinite(signals))
  np.testing.assert_allclose(signals[:, 0], _naive_vimco_signals(terms[:, 0]),
                             rtol=1e-4, atol=1e-3)


def test_iwae_bound_increases_with_k():
  """IWAE(K) is monotone in K in expectation and approaches log p."""
  log_weights = jax.random.normal(jax.random.key(4), (64, 10_000)) * 2.0
  b1 = objectives.iwae_bound(log_weights[:1]).mean()
  b8 = objectives.iwae_bound(log_weights[:8]).mean()
  b64 = objectives.iwae_bound(log_weights).mean()
  assert b1 < b8 < b64 < 2.0  # log E[exp(w)] = 2 for w ~ N(0, 2^2)


def _rws_toy_grads(params, rng, num_samples):
  """The gradient of `objectives.rws` on the toy, one draw of K samples."""
  presence = sample_presence(rng, params, (num_samples, 1))  # [K, 1, 2]

  def loss(p):
    terms, score = toy_terms(p, presence)
    return objectives.rws(terms, score.sum(-1), objectives.nvil_init(3)).loss
  return jax.grad(loss)(params)


def _exact_inclusive_kl_grad(params):
  """grad_theta KL(p(b | x) || q(b)) = -sum_b p(b | x) grad log q(b), by
  enumeration; log p(x, b) = terms + log q does not depend on theta."""
  configs = jnp.asarray(CONFIGS)
  terms, score = toy_terms(params, configs)
  posterior = jax.nn.softmax(jax.lax.stop_gradient(terms.sum(-1) +
                                                   score.sum(-1)))
  return jax.grad(lambda p: -jnp.sum(posterior * config_log_prob(p, configs))
                  )(params)["theta"]


def test_rws_q_gradient_approaches_the_inclusive_kl_gradient():
  exact = np.asarray(_exact_inclusive_kl_grad(PARAMS))
  errors = {}
  for num_samples in (2, 64):
    grads = jax.vmap(lambda k: _rws_toy_grads(PARAMS, k, num_samples))(
        jax.random.split(jax.random.key(0), 4000))["theta"]
    mean = np.asarray(grads.mean(0))
    stderr = np.asarray(grads.std(0)) / np.sqrt(grads.shape[0])
    errors[num_samples] = np.abs(mean - exact)
    if num_samples == 64:  # consistent: the bias is gone at large K
      np.testing.assert_array_less(errors[64], 4 * stderr + 1e-3)
  # Self-normalised weights are biased at small K: the error shrinks.
  assert np.all(errors[2] > 3 * errors[64]), errors


def test_rws_model_gradient_is_the_iwae_gradient():
  """phi (the model's parameter) gets sum_k v_k grad log p(x, z_k): unbiased
  for the gradient of IWAE(K) with respect to the model."""
  num_samples = 3
  exact = jax.grad(lambda p: -exact_iwae(p, num_samples))(PARAMS)["phi"]
  grads = jax.vmap(lambda k: _rws_toy_grads(PARAMS, k, num_samples))(
      jax.random.split(jax.random.key(1), 4000))["phi"]
  stderr = grads.std() / np.sqrt(grads.shape[0])
  assert abs(float(grads.mean() - exact)) < 4 * float(stderr) + 1e-3
