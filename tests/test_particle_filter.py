"""The particle filter: systematic resampling, lineages, FIVO's estimate
against a Kalman filter's exact likelihood, and APDR's frames under it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import particle_filter as pf

TINY = apdr.APDRConfig(
    air=air.AIRConfig(canvas_size=16, num_slots=2, glimpse_size=6,
                      z_what_dim=3, lstm_size=12, mlp_size=10, context_dim=8),
    hidden_size=10, relation_size=8)


def _sequences(batch, frames):
  return jax.random.uniform(jax.random.key(0), (batch, frames, 16, 16))

# A linear-Gaussian state-space model: z_0 ~ N(0, 1), z_t = A z_{t-1} +
# N(0, Q), x_t = z_t + N(0, R). Its likelihood is the Kalman filter's.
A, Q, R = 0.8, 0.5, 0.3
OBSERVED = np.array([0.4, -0.7, 1.3, 0.9, -0.2])


def kalman_log_likelihood(xs):
  mean, var, total = 0.0, 1.0, 0.0  # predictive of z_t
  for x in xs:
    total += stats.norm.logpdf(x, mean, np.sqrt(var + R))
    gain = var / (var + R)
    mean, var = mean + gain * (x - mean), (1 - gain) * var
    mean, var = A * mean, A * A * var + Q
  return total


def _bootstrap_step(carry, x, key):
  """Proposes z_t from the transition; the weight is p(x_t | z_t)."""
  z_prev, started = carry
  noise = jax.random.normal(key, z_prev.shape)
  z = jnp.where(started, A * z_prev + np.sqrt(Q) * noise, noise)
  log_w = jax.scipy.stats.norm.logpdf(x, z, np.sqrt(R))
  return (z, jnp.ones_like(started)), log_w, z


def _run_ssm(rng, batch, k):
  xs = jnp.broadcast_to(jnp.asarray(OBSERVED, jnp.float32)[:, None],
                        (len(OBSERVED), batch))
  initial = (jnp.zeros(batch * k), jnp.zeros(batch * k, bool))
  return pf.smc(_bootstrap_step, initial, xs, rng, batch, k)


def test_systematic_resample_copies_each_particle_k_times_its_weight():
  weights = np.array([[0.5, 0.25, 0.125, 0.125, 0.0],
                      [0.0, 0.0, 1.0, 0.0, 0.0]])
  log_w = jnp.log(jnp.asarray(weights)) + 7.0  # unnormalised
  for seed in range(20):
    ancestors = np.asarray(pf.systematic_resample(jax.random.key(seed), log_w))
    chex.assert_shape(ancestors, (2, 5))
    copies = np.stack([np.bincount(a, minlength=5) for a in ancestors])
    expected = 5 * weights
    assert np.all(copies >= np.floor(expected)), copies
    assert np.all(copies <= np.ceil(expected)), copies
    assert np.all(np.diff(ancestors, axis=1) >= 0)  # sorted


def test_systematic_resample_never_picks_nan_or_minus_inf():
  log_w = jnp.array([[jnp.nan, 0.0, -jnp.inf, 0.0]])
  for seed in range(20):
    ancestors = np.asarray(pf.systematic_resample(jax.random.key(seed), log_w))
    assert set(ancestors.ravel()) <= {1, 3}


def test_trace_back_follows_ancestors():
  # [T=3, batch=1, K=3]: ancestors[t][k] is particle k's parent at frame t.
  ancestors = jnp.array([[[2, 2, 0]], [[1, 0, 0]], [[0, 1, 2]]])
  indices = np.asarray(pf._trace_back(ancestors, jnp.array([0])))
  # Frame 2 keeps particle 0; its parent at frame 1 is ancestors[1][0] = 1,
  # whose parent at frame 0 is ancestors[0][1] = 2.
  np.testing.assert_array_equal(indices[:, 0], [2, 1, 0])


def test_smc_log_marginal_converges_to_the_kalman_likelihood():
  exact = kalman_log_likelihood(OBSERVED)
  result = jax.jit(_run_ssm, static_argnums=(1, 2))(jax.random.key(0), 4,
                                                    4000)
  chex.assert_shape([result.log_marginal, result.log_weight], (4,))
  np.testing.assert_allclose(result.log_marginal, exact, atol=0.05)


def test_smc_marginal_estimate_is_unbiased():
  """E[exp(log Z_hat)] = p(x) for every K (here K = 4), the property that
  makes FIVO a lower bound; a wrong normalisation (log-sum instead of
  log-mean) or weights carried across a resampling would bias it."""
  exact = kalman_log_likelihood(OBSERVED)
  result = jax.jit(_run_ssm, static_argnums=(1, 2))(jax.random.key(1), 20000,
                                                    4)
  ratio = np.exp(np.asarray(result.log_marginal, np.float64) - exact)
  standard_error = ratio.std() / np.sqrt(ratio.size)
  assert abs(ratio.mean() - 1.0) < 4 * standard_error, (ratio.mean(),
                                                        standard_error)
  # Jensen: the estimate's log is below log p(x) on average (a bound).
  assert np.mean(np.asarray(result.log_marginal)) < exact


def test_smc_keeps_a_lineage_whose_weights_sum_to_its_log_weight():
  result = _run_ssm(jax.random.key(2), 3, 16)
  z = np.asarray(result.frames)  # [batch, T]
  chex.assert_shape(z, (3, len(OBSERVED)))
  recomputed = stats.norm.logpdf(OBSERVED[None], z, np.sqrt(R)).sum(-1)
  np.testing.assert_allclose(result.log_weight, recomputed, rtol=1e-5)


@pytest.fixture(scope="module")
def params():
  return apdr.init_params(TINY, jax.random.key(0))


def test_one_particle_is_log_weight_terms(params):
  images = _sequences(2, 4)
  key = jax.random.key(5)
  single = pf.particle_filter(TINY, params, images, key, 0.3, 1)
  plain = apdr.log_weight_terms(TINY, params, images, key, 0.3)
  chex.assert_trees_all_close(single.frames, plain.frames, rtol=1e-5,
                              atol=1e-4)
  np.testing.assert_allclose(single.log_weight, plain.terms.sum(-1),
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(single.log_marginal, plain.terms.sum(-1),
                             rtol=1e-5, atol=1e-3)


def test_particle_filter_shapes_and_ids(params):
  batch, frames, n = 2, 4, TINY.num_slots
  out = jax.jit(pf.particle_filter, static_argnums=(0, 5),
                static_argnames="with_canvas")(
      TINY, params, _sequences(batch, frames),
      jax.random.key(1), jnp.float32(0.3), 3, with_canvas=True)
  chex.assert_shape(out.frames.z_where, (batch, frames, n, 3))
  chex.assert_shape([out.frames.presence, out.frames.ids],
                    (batch, frames, n))
  chex.assert_shape(out.frames.canvas, (batch, frames, 16, 16))
  chex.assert_shape([out.log_weight, out.log_marginal], (batch,))
  chex.assert_tree_all_finite((out.log_weight, out.log_marginal))
  # The kept lineage's frames carry its own log-weight.
  np.testing.assert_allclose(out.log_weight,
                             out.frames.terms.sum((-2, -1)), rtol=1e-5,
                             atol=1e-3)
  ids = np.asarray(out.frames.ids)
  presence = np.asarray(out.frames.presence)
  np.testing.assert_array_equal(ids >= 0, presence > 0.5)


def test_decompose_with_particles_keeps_the_best_lineage(params):
  from apdr_jax import sequence_evaluation
  images = np.asarray(_sequences(3, 3))
  best = sequence_evaluation.decompose(TINY, params, images, rho=0.3,
                                       best_of=4, rng=jax.random.key(2),
                                       particles=True)
  out = pf.particle_filter(TINY, params, jnp.asarray(images),
                           jax.random.fold_in(jax.random.key(2), 0), 0.3, 4)
  np.testing.assert_allclose(best["log_weight"], out.log_weight, rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_array_equal(best["ids"], out.frames.ids)
  chex.assert_shape(best["reconstructions"], (3, 3, 16, 16))
  with pytest.raises(ValueError, match="particles"):
    sequence_evaluation.decompose(TINY, params, images, particles=True)
