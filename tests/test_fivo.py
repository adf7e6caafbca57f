"""FIVO as a training objective: the adaptive filter's bound against IWAE (no
resampling) and against the evaluation filter (resampling every frame), its
curriculum masking, and the gradients of `fivo_rws_loss`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import fivo
from apdr_jax import objectives
from apdr_jax import particle_filter

TINY_AIR = air.AIRConfig(canvas_size=16, num_slots=2, glimpse_size=6,
                         z_what_dim=3, lstm_size=12, mlp_size=10, context_dim=8)
TINY = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8)
# The networks of p (the rest of the parameters are q's); as in test_apdr.
MODEL_NETWORKS = ("prior_rnn", "prior_survival", "prior_where", "prior_what",
                  "decoder")
RHO = jnp.asarray(0.4)
K = 4


@pytest.fixture(scope="module")
def params():
  params = apdr.init_params(TINY, jax.random.key(0))
  # Objects are found in frame 0, so that later frames propagate them.
  params["air"]["presence_head"]["bias"] = jnp.full_like(
      params["air"]["presence_head"]["bias"], 2.0)
  return params


@pytest.fixture(scope="module")
def images():
  return jax.random.uniform(jax.random.key(1), (3, 3, 16, 16)) ** 3


def _run(params, images, threshold, **kwargs):
  return jax.jit(lambda p, x: fivo.run_filter(
      TINY, p, x, jax.random.key(2), RHO, K, threshold=threshold,
      **kwargs))(params, images)


def test_without_resampling_the_bound_is_iwae(params, images):
  weights = _run(params, images, threshold=0.0)
  assert float(weights.resampled.sum()) == 0
  per_particle = (weights.log_joint - weights.log_q).sum(0)  # [batch, K]
  np.testing.assert_allclose(fivo.bound(weights),
                             objectives.log_mean_exp(per_particle, axis=1),
                             rtol=1e-5, atol=1e-3)


def test_resampling_every_frame_is_the_evaluation_filter(params, images):
  weights = _run(params, images, threshold=2.0)
  assert float(weights.resampled[:-1].min()) == 1  # every frame but the last
  reference = jax.jit(lambda p, x: particle_filter.particle_filter(
      TINY, p, x, jax.random.key(2), RHO, K))(params, images)
  np.testing.assert_allclose(fivo.bound(weights), reference.log_marginal,
                             rtol=1e-5, atol=1e-3)


def test_adaptive_resampling_happens_only_below_the_threshold(params, images):
  weights = _run(params, images, threshold=0.5)
  posterior = jax.nn.softmax(weights.carried + weights.log_joint -
                             weights.log_q, axis=-1)
  ess = 1.0 / jnp.sum(posterior ** 2, axis=-1)
  np.testing.assert_array_equal(weights.resampled, ess < 0.5 * K)


def test_frames_beyond_num_frames_add_nothing(params, images):
  staged = _run(params, images, threshold=0.5, num_frames=jnp.asarray(2))
  cut = _run(params, images[:, :2], threshold=0.5)
  np.testing.assert_allclose(fivo.bound(staged), fivo.bound(cut), rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_array_equal(staged.log_joint[2], 0.0)
  np.testing.assert_array_equal(staged.log_q[2], 0.0)


def _split(grads):
  """(model networks' gradient, q's), flattened."""
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  is_model = lambda path: any(getattr(k, "key", None) in MODEL_NETWORKS
                              for k in path)
  model = jnp.concatenate([g.ravel() for p, g in flat if is_model(p)])
  q = jnp.concatenate([g.ravel() for p, g in flat if not is_model(p)])
  return model, q


def test_model_gradient_is_iwae_without_resampling_and_q_gets_the_wake_update(
    params, images):
  """With no resampling, the model's gradient is the IWAE bound's (as in
  RWS); q's is `sum_t sum_k v_t^k grad log q_t^k` with the filtering
  weights `v_t`, computed here directly."""
  def loss(p):
    return fivo.fivo_rws_loss(fivo.run_filter(
        TINY, p, images, jax.random.key(2), RHO, K, threshold=0.0))[0]

  def iwae_model_loss(p):
    weights = fivo.run_filter(TINY, p, images, jax.random.key(2), RHO, K,
                              threshold=0.0)
    per_particle = (weights.log_joint - jax.lax.stop_gradient(
        weights.log_q)).sum(0)
    return -objectives.log_mean_exp(per_particle, axis=1).mean()

  def wake_loss(p):
    weights = fivo.run_filter(TINY, p, images, jax.random.key(2), RHO, K,
                              threshold=0.0)
    # The filtering weights at frame t: the partial sums up to t.
    partial = jnp.cumsum(weights.log_joint - weights.log_q, axis=0)
    v = jax.nn.softmax(jax.lax.stop_gradient(partial), axis=-1)
    return -jnp.sum(v * weights.log_q, axis=(0, 2)).mean()

  got_model, got_q = _split(jax.jit(jax.grad(loss))(params))
  want_model, _ = _split(jax.jit(jax.grad(iwae_model_loss))(params))
  _, want_q = _split(jax.jit(jax.grad(wake_loss))(params))
  assert float(jnp.abs(want_model).sum()) > 0 and float(
      jnp.abs(want_q).sum()) > 0
  # Equal up to float32 rounding: the telescoped per-frame log-sum-exps and
  # the one over whole sequences add in different orders.
  for got, want in ((got_model, want_model), (got_q, want_q)):
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(want).max()))


def test_remat_changes_nothing(params, images):
  def loss(p, remat):
    return fivo.fivo_rws_loss(fivo.run_filter(
        TINY, p, images, jax.random.key(2), RHO, K, threshold=0.5,
        remat=remat))[0]
  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(params)
  remat = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
