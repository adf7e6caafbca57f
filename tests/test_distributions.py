"""Tests of apdr_jax.distributions against jax.scipy.stats and closed forms."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import distributions as dist


# --------------------------------------------------------------------- normal


def test_normal_log_prob_matches_scipy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 5)).astype(np.float32) * 3.0
  loc = rng.normal(size=(4, 5)).astype(np.float32)
  scale = rng.uniform(0.05, 4.0, size=(4, 5)).astype(np.float32)
  actual = dist.normal_log_prob(x, loc, scale)
  chex.assert_shape(actual, (4, 5))
  chex.assert_trees_all_close(
      actual, jax.scipy.stats.norm.logpdf(x, loc, scale), rtol=1e-5, atol=1e-5)
  # Scalar parameters broadcast, as in the standard-normal z_what prior.
  chex.assert_trees_all_close(
      dist.normal_log_prob(x, 0.0, 1.0), jax.scipy.stats.norm.logpdf(x),
      rtol=1e-5, atol=1e-5)


def test_normal_sample_moments():
  n = 100_000
  loc, scale = 1.5, 0.7
  samples = np.asarray(dist.normal_sample(
      jax.random.key(0), jnp.full((n,), loc), jnp.full((n,), scale)))
  chex.assert_shape(samples, (n,))
  assert samples.dtype == np.float32
  # Within five standard errors of the mean and of the standard deviation.
  assert abs(samples.mean() - loc) < 5 * scale / np.sqrt(n)
  assert abs(samples.std() - scale) < 5 * scale / np.sqrt(2 * n)
  # Different keys give different samples; the same key the same.
  again = dist.normal_sample(jax.random.key(0), jnp.full((n,), loc),
                             jnp.full((n,), scale))
  other = dist.normal_sample(jax.random.key(1), jnp.full((n,), loc),
                             jnp.full((n,), scale))
  np.testing.assert_array_equal(again, samples)
  assert not np.allclose(other, samples)


def test_normal_sample_pathwise_gradients():
  rng = np.random.default_rng(1)
  key = jax.random.key(2)
  loc = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.1, 2.0, size=(3, 4)), jnp.float32)
  eps = jax.random.normal(key, (3, 4), jnp.float32)
  sample = dist.normal_sample(key, loc, scale)
  chex.assert_trees_all_close(sample, loc + scale * eps, atol=1e-6)
  # Each sample depends on its own loc and scale only, so the gradient of the
  # sum is the elementwise derivative.
  total = lambda l, s: dist.normal_sample(key, l, s).sum()
  d_loc, d_scale = jax.grad(total, argnums=(0, 1))(loc, scale)
  chex.assert_trees_all_close(d_loc, jnp.ones_like(loc))
  chex.assert_trees_all_close(d_scale, eps, atol=1e-6)
  jacobian = jax.jacfwd(lambda l: dist.normal_sample(key, l, scale))(loc)
  chex.assert_trees_all_close(jacobian.reshape(12, 12), jnp.eye(12))


# ------------------------------------------------------------------ bernoulli


def test_bernoulli_log_prob_closed_form():
  rng = np.random.default_rng(3)
  prob = rng.uniform(0.01, 0.99, size=(6, 7)).astype(np.float32)
  value = (rng.uniform(size=(6, 7)) < 0.5).astype(np.float32)
  expected = np.where(value == 1.0, np.log(prob.astype(np.float64)),
                      np.log1p(-prob.astype(np.float64)))
  actual = dist.bernoulli_log_prob(value, prob)
  chex.assert_shape(actual, (6, 7))
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
  # Vectorises over a scalar prob (the prior's rho).
  np.testing.assert_allclose(
      dist.bernoulli_log_prob(value, jnp.float32(0.3)),
      np.where(value == 1.0, np.log(0.3), np.log(0.7)), rtol=1e-5)


def test_bernoulli_log_prob_clipped_at_the_ends():
  value = jnp.array([0.0, 1.0, 0.0, 1.0])
  prob = jnp.array([0.0, 0.0, 1.0, 1.0])
  out = np.asarray(dist.bernoulli_log_prob(value, prob))
  assert np.all(np.isfinite(out)), out
  # The certain outcomes cost ~nothing, the impossible ones ~log(eps).
  np.testing.assert_allclose(out[[0, 3]], 0.0, atol=1e-5)
  np.testing.assert_allclose(out[[1, 2]], np.log(1e-6), rtol=1e-3)
  assert out[1] < -13.0 and out[2] < -13.0
  grad = jax.grad(lambda p: dist.bernoulli_log_prob(value, p).sum())(prob)
  assert np.all(np.isfinite(grad)), grad


def test_bernoulli_sample_frequency():
  n = 40_000
  probs = np.array([0.05, 0.3, 0.5, 0.9], np.float32)
  samples = np.asarray(dist.bernoulli_sample(
      jax.random.key(4), jnp.broadcast_to(probs, (n, 4))))
  chex.assert_shape(samples, (n, 4))
  assert samples.dtype == np.float32
  assert set(np.unique(samples)) <= {0.0, 1.0}
  frequency = samples.mean(0)
  standard_error = np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(frequency - probs) < 5 * standard_error), frequency


def test_bernoulli_sample_has_no_gradient():
  key = jax.random.key(5)
  prob = jnp.array([0.1, 0.5, 0.9, 0.99])
  weights = jnp.array([1.0, -2.0, 3.0, 4.0])
  grad = jax.grad(lambda p: (dist.bernoulli_sample(key, p) * weights).sum())(
      prob)
  chex.assert_trees_all_close(grad, jnp.zeros_like(prob))


# -------------------------------------------------------- truncated geometric


RHOS = (0.05, 0.3, 0.5, 0.9, 0.99)
MAX_COUNTS = (1, 3, 5)


@pytest.mark.parametrize("rho,max_count",
                         list(itertools.product(RHOS, MAX_COUNTS)))
def test_truncated_geometric_normalised(rho, max_count):
  counts = jnp.arange(max_count + 1)
  log_p = dist.truncated_geometric_log_prob(counts, jnp.float32(rho), max_count)
  chex.assert_shape(log_p, (max_count + 1,))
  np.testing.assert_allclose(float(jnp.exp(log_p).sum()), 1.0, rtol=1e-5)
  # DESIGN §3.1: p(n) = rho^n (1 - rho) for n < N, p(N) = rho^N.
  expected = [rho ** n * (1 - rho) for n in range(max_count)]
  expected.append(rho ** max_count)
  np.testing.assert_allclose(log_p, np.log(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rho,max_count",
                         list(itertools.product(RHOS, MAX_COUNTS)))
def test_truncated_geometric_is_sum_of_presence_bernoullis(rho, max_count):
  """Presence vector [1] * n + [0], with no stop sampled after N ones."""
  for n in range(max_count + 1):
    presence = jnp.array([1.0] * n + ([0.0] if n < max_count else []))
    bernoulli_sum = dist.bernoulli_log_prob(presence, jnp.float32(rho)).sum()
    log_p = dist.truncated_geometric_log_prob(jnp.array(n), jnp.float32(rho),
                                              max_count)
    np.testing.assert_allclose(log_p, bernoulli_sum, rtol=1e-5, atol=1e-6)


def test_truncated_geometric_broadcasts():
  counts = jnp.array([[0, 1, 2], [3, 3, 1]])
  rho = jnp.array([[0.2], [0.7]])
  out = dist.truncated_geometric_log_prob(counts, rho, 3)
  chex.assert_shape(out, (2, 3))
  r = np.array([[0.2], [0.7]])
  c = np.asarray(counts)
  expected = c * np.log(r) + np.where(c < 3, np.log1p(-r), 0.0)
  np.testing.assert_allclose(out, expected, rtol=1e-5)
