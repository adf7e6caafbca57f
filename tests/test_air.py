"""AIR's shapes, masking and log-weights, the latter against exact enumeration."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import air
from apdr_jax import distributions as dist
from apdr_jax import objectives

# Jitted once per config: eager op-by-op dispatch of these small models costs
# far more test time than one compilation.
infer = jax.jit(air.infer, static_argnums=0, static_argnames=("deterministic",))
init_params = air.init_params  # jitted in the library
log_weight_terms = jax.jit(air.log_weight_terms, static_argnums=0,
                           static_argnames=("deterministic",))

TINY = air.AIRConfig(canvas_size=16, num_slots=3, glimpse_size=6, z_what_dim=3,
                     lstm_size=8, mlp_size=8, presence_init=0.6)


def _images(batch, size=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size))


def test_infer_shapes():
  params = init_params(TINY, jax.random.key(0))
  slots = infer(TINY, params, _images(5), jax.random.key(1))
  chex.assert_shape(slots.z_where, (5, 3, 3))
  chex.assert_shape(slots.z_what, (5, 3, 3))
  chex.assert_shape([slots.presence, slots.active, slots.presence_prob,
                     slots.log_q_presence, slots.log_q_z], (5, 3))
  chex.assert_shape(slots.hidden, (5, 3, 8))
  out = log_weight_terms(TINY, params, _images(5), jax.random.key(1), 0.1)
  chex.assert_shape([out.terms, out.score_log_q, out.baseline], (5, 4))
  chex.assert_shape(out.canvas, (5, 16, 16))


def test_default_parameter_count():
  """The standard architecture, counted layer by layer (DESIGN §4 sizes)."""
  c = air.AIRConfig()
  params = jax.eval_shape(lambda: init_params(c, jax.random.key(0)))
  h, d, g, m = c.lstm_size, c.z_what_dim, c.glimpse_size ** 2, c.mlp_size
  lstm = (c.canvas_size ** 2 * 4 * h + 4 * h) + c.latent_dim * 4 * h + h * 4 * h + 2 * h
  presence = h + 1
  where = 2 * (h * 3 + 3)
  encoder = (g * m + m) + 2 * (m * d + d)
  decoder = (d * m + m) + (m * g + g)
  baseline = (h * m + m) + (m + 1)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == lstm + presence + where + encoder + decoder + baseline
  # A rank-r image-to-gates matrix replaces `[H*W, 4h]` by `[H*W, r] [r, 4h]`.
  r = 128
  low = jax.eval_shape(lambda: init_params(
      dataclasses.replace(c, image_rank=r), jax.random.key(0)))
  assert (sum(x.size for x in jax.tree.leaves(low)) ==
          count - c.canvas_size ** 2 * 4 * h + c.canvas_size ** 2 * r + r * 4 * h)
  chex.assert_shape(low["rnn"]["image_projection"]["kernel"],
                    (c.canvas_size ** 2, r))


def test_low_rank_image_gates_are_the_product_of_the_two_matrices():
  config = dataclasses.replace(TINY, image_rank=3)
  params = init_params(config, jax.random.key(0))
  images = _images(4)
  gates = air.image_gates(config, params, images)
  rnn = params["rnn"]
  expected = (images.reshape(4, -1) @ rnn["image_projection"]["kernel"] @
              rnn["image"]["kernel"] + rnn["image"]["bias"])
  chex.assert_trees_all_close(gates, expected, rtol=1e-5, atol=1e-5)
  slots = infer(config, params, images, jax.random.key(1))  # runs end to end
  chex.assert_shape(slots.z_where, (4, TINY.num_slots, 3))


def test_presence_is_a_prefix_and_respects_max_steps():
  params = init_params(TINY, jax.random.key(0))
  slots = infer(TINY, params, _images(256), jax.random.key(2),
                    max_steps=jnp.array([3, 1] * 128))
  presence = np.asarray(slots.presence)
  assert np.all(presence[:, 1:] <= presence[:, :-1])
  assert presence[:, 0].mean() > 0.2 and presence[:, 1].mean() > 0.05
  assert np.all(presence[1::2, 1:] == 0)  # max_steps = 1
  np.testing.assert_array_equal(slots.active[:, 1:][::2], presence[::2, :-1])
  np.testing.assert_array_equal(slots.active[1::2, 1:], 0)


def test_clipped_canvas_likelihood_against_a_reference_density():
  """`canvas='clip'` scores min(sum of drawings, 1), as the data compose
  overlapping digits; 'sum' scores the sum itself (the notes)."""
  from scipy import stats
  images = np.asarray(_images(3))
  canvas = 1.6 * np.asarray(_images(3, seed=1))  # some pixels above 1
  assert (canvas > 1).any()
  clip = dataclasses.replace(TINY, canvas="clip")
  for config, mean in ((TINY, canvas), (clip, np.minimum(canvas, 1.0))):
    expected = stats.norm.logpdf(images, mean, config.likelihood_std).sum(
        (-2, -1))
    np.testing.assert_allclose(
        air.log_likelihood(config, jnp.asarray(images), jnp.asarray(canvas)),
        expected, rtol=1e-5)
  with pytest.raises(ValueError, match="canvas"):
    air.AIRConfig(canvas="max")


def test_presence_prior_sums_to_truncated_geometric():
  """Summed over slots, the per-decision prior is DESIGN §3.1's p(n)."""
  params = init_params(TINY, jax.random.key(0))
  slots = infer(TINY, params, _images(256), jax.random.key(3))
  rho = 0.2
  log_p_presence, _ = air.prior_log_probs(TINY, slots, rho)
  count = slots.presence.sum(-1)
  np.testing.assert_allclose(
      log_p_presence.sum(-1),
      dist.truncated_geometric_log_prob(count, rho, TINY.num_slots), rtol=1e-5)


def test_absent_slots_contribute_nothing():
  """Changing an absent slot's latents changes no term and has zero gradient."""
  params = init_params(TINY, jax.random.key(0))
  slots = infer(TINY, params, _images(4), jax.random.key(4))
  presence = jnp.array([[1.0, 0.0, 0.0]] * 4)
  slots = slots._replace(presence=presence,
                         active=jnp.array([[1.0, 1.0, 0.0]] * 4))
  images = _images(4)

  def log_joint(z_what, z_where):
    s = slots._replace(z_what=z_what, z_where=z_where)
    log_p_presence, log_p_z = air.prior_log_probs(TINY, s, 0.1)
    canvas = air.render_slots(TINY, params, s)
    return (air.log_likelihood(TINY, images, canvas).sum() +
            log_p_presence.sum() + log_p_z.sum())

  grad_what, grad_where = jax.jit(jax.grad(log_joint, argnums=(0, 1)))(
      slots.z_what, slots.z_where)
  np.testing.assert_array_equal(grad_what[:, 1:], 0.0)
  np.testing.assert_array_equal(grad_where[:, 1:], 0.0)
  assert np.abs(grad_what[:, 0]).sum() > 0  # the present slot does matter
  noise = jax.random.normal(jax.random.key(5), slots.z_what.shape) * 3
  moved = slots.z_what.at[:, 1:].add(noise[:, 1:])
  log_joint = jax.jit(log_joint)
  np.testing.assert_allclose(log_joint(moved, slots.z_where),
                             log_joint(slots.z_what, slots.z_where), rtol=1e-6)


def test_inactive_decisions_have_zero_log_probs():
  params = init_params(TINY, jax.random.key(0))
  out = log_weight_terms(TINY, params, _images(256), jax.random.key(6), 0.1)
  slots = out.slots
  inactive = np.asarray(slots.active) == 0
  assert inactive.any()
  np.testing.assert_array_equal(np.asarray(slots.log_q_presence)[inactive], 0)
  absent = np.asarray(slots.presence) == 0
  np.testing.assert_array_equal(np.asarray(slots.log_q_z)[absent], 0)
  np.testing.assert_array_equal(np.asarray(out.terms[:, :-1])[inactive], 0)


# --- Exact enumeration -------------------------------------------------------
# With the heads' kernels at zero, q is the same at every step whatever the
# image: presence probability PI, z_where ~ N(offset + b, s), z_what ~ N(b', s').
# With the decoder's output at sigmoid(-30) ~ 0, the canvas is empty, so the
# likelihood is the constant C = log N(x | 0, std). Then log p(x) = C exactly
# and the ELBO is a sum over the N + 1 counts with closed-form Gaussian KLs.

PI = 0.6
RHO = 0.3


def _enumerable_params(config, rng):
  params = init_params(config, rng)
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  params["presence_head"]["kernel"] = zeros(params["presence_head"]["kernel"])
  params["presence_head"]["bias"] = jnp.full((1,), math.log(PI / (1 - PI)))
  for head in ("where_head", "what_encoder"):
    for part in ("loc", "scale"):
      params[head][part]["kernel"] = zeros(params[head][part]["kernel"])
  params["where_head"]["loc"]["bias"] = jnp.array([0.2, -0.1, 0.3])
  params["where_head"]["scale"]["bias"] = jnp.array([-1.0, 0.0, -0.5])
  params["what_encoder"]["loc"]["bias"] = jnp.linspace(-0.4, 0.4,
                                                       config.z_what_dim)
  params["what_encoder"]["scale"]["bias"] = jnp.full((config.z_what_dim,), 0.3)
  last = sorted(k for k in params["decoder"] if k.startswith("Dense"))[-1]
  params["decoder"][last]["kernel"] = zeros(params["decoder"][last]["kernel"])
  params["decoder"][last]["bias"] = jnp.full_like(
      params["decoder"][last]["bias"], -30.0)
  return params


def _gauss_kl(mq, sq, mp, sp):
  """KL(N(mq, sq^2) || N(mp, sp^2)) summed, in numpy (closed form)."""
  mq, sq, mp, sp = (np.asarray(v, np.float64) for v in (mq, sq, mp, sp))
  return np.sum(np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2)
                - 0.5)


def _exact(config, params, image):
  softplus = lambda x: np.log1p(np.exp(np.asarray(x, np.float64)))
  where_q = (np.array([config.scale_prior_mean, 0, 0]) +
             params["where_head"]["loc"]["bias"],
             softplus(params["where_head"]["scale"]["bias"]) + 1e-3)
  where_p = (np.array([config.scale_prior_mean, 0, 0]),
             np.array([config.scale_prior_std, config.shift_prior_std,
                       config.shift_prior_std]))
  what_q = (params["what_encoder"]["loc"]["bias"],
            softplus(params["what_encoder"]["scale"]["bias"]) + 1e-3)
  kl_z = (_gauss_kl(*where_q, *where_p) +
          _gauss_kl(*what_q, np.zeros(config.z_what_dim),
                    np.ones(config.z_what_dim)))
  n_max = config.num_slots
  pmf = lambda p, n: p ** n * ((1 - p) if n < n_max else 1.0)
  log_lik = np.sum(-0.5 * (np.asarray(image, np.float64) /
                           config.likelihood_std) ** 2 -
                   np.log(config.likelihood_std) - 0.5 * np.log(2 * np.pi))
  elbo = log_lik + sum(
      pmf(PI, n) * (np.log(pmf(RHO, n)) - np.log(pmf(PI, n)) - n * kl_z)
      for n in range(n_max + 1))
  return elbo, log_lik


NUM_MC = 20_000


def _enumerable_samples():
  """Exact (ELBO, log p(x)) and `NUM_MC` samples of the enumerable model."""
  params = _enumerable_params(TINY, jax.random.key(0))
  image = _images(1, seed=7)[0]
  images = jnp.broadcast_to(image, (NUM_MC,) + image.shape)
  out = log_weight_terms(TINY, params, images, jax.random.key(8), RHO)
  return _exact(TINY, params, image), out


def check_against_exact(terms, exact_elbo, exact_log_px):
  """Log-weights `terms.sum(-1)` of `NUM_MC` samples against the exact ELBO
  and log p(x): their mean is the ELBO, mean(exp(w)) is p(x), and IWAE(K)
  lies between the two, tighter as K grows."""
  log_weight = np.asarray(terms.sum(-1), np.float64)
  stderr = log_weight.std() / np.sqrt(NUM_MC)
  assert abs(log_weight.mean() - exact_elbo) < 4 * stderr + 1e-3
  # Importance sampling: mean(exp(w)) estimates p(x) without bias.
  ratios = np.exp(log_weight - exact_log_px)
  assert abs(ratios.mean() - 1.0) < 4 * ratios.std() / np.sqrt(NUM_MC)
  iwae_10 = objectives.iwae_bound(log_weight.reshape(10, -1)).mean()
  iwae_100 = objectives.iwae_bound(log_weight.reshape(100, -1)).mean()
  assert exact_elbo < iwae_10 < iwae_100 < exact_log_px + 1e-2


def test_elbo_and_log_marginal_match_enumeration():
  (exact_elbo, exact_log_px), out = _enumerable_samples()
  check_against_exact(out.terms, exact_elbo, exact_log_px)
  assert exact_log_px - exact_elbo > 0.5  # the test is not vacuous


def test_enumeration_detects_a_wrong_prior():
  """The same check fails if the presence prior's stop term is dropped."""
  (exact_elbo, _), out = _enumerable_samples()
  num = NUM_MC
  stop_terms = (out.slots.active * (1 - out.slots.presence) *
                jnp.log1p(-RHO)).sum(-1)
  wrong = np.asarray(out.terms.sum(-1) - stop_terms, np.float64)
  assert abs(wrong.mean() - exact_elbo) > 4 * wrong.std() / np.sqrt(num)


def test_deterministic_inference_is_repeatable():
  params = init_params(TINY, jax.random.key(0))
  a = infer(TINY, params, _images(3), jax.random.key(1), deterministic=True)
  b = infer(TINY, params, _images(3), jax.random.key(2), deterministic=True)
  chex.assert_trees_all_close(a, b)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (50, math.sqrt(0.1 * 1e-3)),
                                           (100, 1e-3), (500, 1e-3)])
def test_rho_schedule(step, expected):
  np.testing.assert_allclose(air.presence_rho(jnp.asarray(step), 0.1, 1e-3, 100),
                             expected, rtol=1e-5)


def test_shared_first_state_equals_the_generic_first_step():
  """The image-only first step (computed once, shared) is the same LSTM step."""
  params = init_params(TINY, jax.random.key(0))
  images = _images(4)
  gates = air.image_gates(TINY, params, images)
  learned = air.AIRNetworks(TINY).apply({"params": params}, 4,
                                        method=air.AIRNetworks.initial_state)
  shared = air.first_lstm_state(TINY, params, gates)
  generic = air.first_lstm_state(TINY, params, gates, initial_state=learned)
  chex.assert_trees_all_close(shared, generic, rtol=1e-6, atol=1e-6)
  a = infer(TINY, params, images, jax.random.key(1), first_state=shared)
  b = infer(TINY, params, images, jax.random.key(1), initial_state=learned)
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


def test_conv_glimpse_networks_keep_the_interface_and_the_initial_canvas():
  """`glimpse_net='conv'`: same shapes in and out as the MLPs, the decoder
  starts at sigmoid(decoder_bias) everywhere (small weights aside), and
  inference and the log-weight run unchanged around them."""
  conv = dataclasses.replace(TINY, glimpse_net="conv", glimpse_size=8)
  params = init_params(conv, jax.random.key(0))
  assert "Conv_0" in params["what_encoder"]
  assert "ConvTranspose_0" in params["decoder"]
  z_what = jax.random.normal(jax.random.key(1), (2, 5, conv.z_what_dim))
  glimpses = air.decode(conv, params, z_what)
  chex.assert_shape(glimpses, (2, 5, 8, 8))
  assert np.all(np.asarray(glimpses) > 0) and np.all(np.asarray(glimpses) < 1)
  loc, scale = air._call(conv, params, air.AIRNetworks.encode,
                         jnp.zeros((3, 64)))
  chex.assert_shape((loc, scale), (3, conv.z_what_dim))
  out = log_weight_terms(conv, params, _images(4), jax.random.key(2), 0.1)
  chex.assert_shape(out.terms, (4, conv.num_slots + 1))
  assert np.all(np.isfinite(np.asarray(out.terms)))
  with pytest.raises(ValueError, match="glimpse_net"):
    air.AIRConfig(glimpse_net="resnet")
