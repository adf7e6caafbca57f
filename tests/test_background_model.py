"""The background component (notes §7, `apdr_jax/background.py`): the model
without it unchanged, its likelihood and latent against reference densities,
masking, and the exact ELBO by enumeration with a background."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from apdr_jax import air
from apdr_jax import background as background_lib

from test_air import (NUM_MC, RHO, TINY, _enumerable_params, _exact,
                      _gauss_kl, _images, check_against_exact)

log_weight_terms = jax.jit(air.log_weight_terms, static_argnums=0,
                           static_argnames=("deterministic", "detach_samples"))

MLP = dataclasses.replace(TINY, background="mlp")
CONV = dataclasses.replace(TINY, background="conv")
LATENT = dataclasses.replace(TINY, background="mlp", background_latent_dim=4)
COARSE = dataclasses.replace(TINY, background="conv", background_resolution=5)


def _with_background(config):
  """Parameters of `config` whose object networks are those of `TINY`'s."""
  params = air.init_params(config, jax.random.key(0))
  plain = air.init_params(TINY, jax.random.key(0))
  assert "background_net" in params and "background_net" not in plain
  return {**plain, "background_net": params["background_net"]}, plain


def test_none_keeps_the_parameters_and_the_log_weight_of_the_plain_model():
  """`background='none'` adds no parameter, and its log-weight's last column
  is log N(x | canvas, std) by scipy (no background term anywhere)."""
  params = air.init_params(TINY, jax.random.key(0))
  assert not any("background" in k for k in params)
  images = _images(5)
  out = log_weight_terms(TINY, params, images, jax.random.key(1), 0.1)
  expected = stats.norm.logpdf(np.asarray(images), np.asarray(out.canvas),
                               TINY.likelihood_std).sum((-2, -1))
  np.testing.assert_allclose(out.terms[:, -1], expected, rtol=1e-5)
  np.testing.assert_array_equal(out.background, 0.0)


@pytest.mark.parametrize("config", [MLP, CONV, LATENT, COARSE],
                         ids=["mlp", "conv", "latent", "coarse"])
def test_background_leaves_the_objects_and_adds_its_own_terms(config):
  """With the object networks shared, a background model samples the same
  objects (its key is folded in) with the same slot terms; its likelihood is
  scipy's density at `objects + (1 - min(objects, 1)) * b`; a latent adds
  `log N(z_bg | 0, 1) - log q(z_bg)` to the last column, `kl` and `log_q`."""
  params, plain = _with_background(config)
  images = _images(6)
  rng = jax.random.key(2)
  out = log_weight_terms(config, params, images, rng, 0.1)
  ref = log_weight_terms(TINY, plain, images, rng, 0.1)
  chex.assert_shape(out.background, (6, 16, 16))
  np.testing.assert_allclose(out.slots.z_where, ref.slots.z_where)
  np.testing.assert_allclose(out.terms[:, :-1], ref.terms[:, :-1], rtol=1e-6)
  objects, back = np.asarray(ref.canvas), np.asarray(out.background)
  assert 0 < back.min() and back.max() < 1 and back.std() > 0
  mean = objects + (1 - np.minimum(objects, 1)) * back
  np.testing.assert_allclose(out.canvas, mean, rtol=1e-5, atol=1e-6)
  log_lik = stats.norm.logpdf(np.asarray(images), mean,
                              config.likelihood_std).sum((-2, -1))
  np.testing.assert_allclose(out.log_likelihood, log_lik, rtol=1e-5)
  background_term = out.terms[:, -1] - out.log_likelihood
  extra_log_q = out.log_q - ref.log_q
  if not config.background_latent_dim:
    np.testing.assert_array_equal(background_term, 0.0)
    np.testing.assert_array_equal(extra_log_q, 0.0)
    return
  # The latent's density terms against scipy, at q's parameters.
  slots = out.slots
  loc, scale = air._call(config, params, air.AIRNetworks.background_step,
                         "posterior_params", slots.final_state.hidden)
  code = background_lib.infer(
      lambda m, *a: air._call(config, params, air.AIRNetworks.background_step,
                              m, *a),
      config.background_latent_dim, slots.final_state.hidden,
      jax.random.fold_in(rng, config.num_slots)).image
  np.testing.assert_allclose(code, out.background, rtol=1e-6)
  # Recover z_bg from the same key to score it independently.
  z = np.asarray(loc) + np.asarray(scale) * np.asarray(jax.random.normal(
      jax.random.fold_in(rng, config.num_slots), loc.shape))
  log_p = stats.norm.logpdf(z, 0, 1).sum(-1)
  log_q = stats.norm.logpdf(z, np.asarray(loc), np.asarray(scale)).sum(-1)
  np.testing.assert_allclose(background_term, log_p - log_q, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(extra_log_q, log_q, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.kl - ref.kl, log_q - log_p, rtol=1e-4,
                             atol=1e-4)


def test_a_coarse_background_is_decoded_small_then_resized():
  """`background_resolution=r`: the decoder draws `r x r` intensities, and
  `b` is their bilinear resize to the canvas (checked against
  `jax.image.resize` of the MLP's own output), so it has no detail finer
  than the grid (a resize of logits would, through the sigmoid)."""
  config = dataclasses.replace(TINY, background="mlp", background_resolution=4)
  params = air.init_params(config, jax.random.key(0))
  assert params["background_net"]["decoder"]["Dense_1"]["bias"].shape == (16,)
  hidden = jax.random.normal(jax.random.key(1), (3, TINY.lstm_size))
  net = background_lib.BackgroundNet("mlp", 16, TINY.mlp_size, 0, 4)
  back = net.apply({"params": params["background_net"]}, hidden,
                   method=net.decode)
  logits = net.apply({"params": params["background_net"]}, hidden,
                     method=lambda m, h: m.decoder(h)).reshape(3, 4, 4)
  expected = jax.image.resize(jax.nn.sigmoid(logits), (3, 16, 16), "bilinear")
  np.testing.assert_allclose(back, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="background_resolution"):
    dataclasses.replace(config, background_resolution=17)


def test_a_static_image_shifts_the_background_in_logit_space():
  """`background_static`: `b = sigmoid(logit(b_coarse) + r * s)` per pixel
  (scipy's logit and expit; `r = STATIC_RATE`), `s` a learned `[H, W]`
  parameter that starts at 0, where `b` is the coarse background; without
  it there is no `s`."""
  from scipy import special
  config = dataclasses.replace(TINY, background="mlp", background_resolution=4,
                               background_static=True)
  params = air.init_params(config, jax.random.key(0))
  static = params["background_net"]["static_logit"]
  chex.assert_shape(static, (16, 16))
  np.testing.assert_array_equal(static, 0.0)
  without = air.init_params(dataclasses.replace(config, background_static=False),
                            jax.random.key(0))
  assert "static_logit" not in without["background_net"]
  hidden = jax.random.normal(jax.random.key(1), (3, TINY.lstm_size))
  decode = lambda p, c: background_lib.BackgroundNet(
      "mlp", 16, TINY.mlp_size, 0, 4, c).apply(
          {"params": p}, hidden, method="decode")
  coarse = np.asarray(decode(without["background_net"], False), np.float64)
  np.testing.assert_allclose(decode(params["background_net"], True), coarse,
                             rtol=1e-5)
  shift = np.asarray(jax.random.normal(jax.random.key(2), (16, 16)))
  moved = {**params["background_net"], "static_logit": jnp.asarray(shift)}
  expected = special.expit(special.logit(coarse) +
                           background_lib.STATIC_RATE * shift)
  np.testing.assert_allclose(decode(moved, True), expected, rtol=1e-4,
                             atol=1e-6)
  # The flat warm-up flattens the image-dependent part only: the static
  # image, which every scene shares, is there from the start.
  flat = background_lib.BackgroundNet("mlp", 16, TINY.mlp_size, 0, 4, True).apply(
      {"params": moved}, hidden, 0.0, method="decode")
  coarse_mean = coarse.mean((-2, -1), keepdims=True)
  np.testing.assert_allclose(
      flat, special.expit(special.logit(coarse_mean) +
                          background_lib.STATIC_RATE * shift),
      rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="background_static"):
    dataclasses.replace(config, background_static=1)


def test_additive_composition_against_a_reference_density():
  config = dataclasses.replace(MLP, background_compose="add")
  images, objects = np.asarray(_images(3)), 1.4 * np.asarray(_images(3, seed=1))
  back = np.asarray(_images(3, seed=2))
  expected = stats.norm.logpdf(images, np.minimum(objects + back, 1.0),
                               config.likelihood_std).sum((-2, -1))
  np.testing.assert_allclose(
      air.log_likelihood(config, jnp.asarray(images), jnp.asarray(objects),
                         jnp.asarray(back)), expected, rtol=1e-5)


def test_absent_slots_contribute_nothing_with_a_background():
  """An absent slot's latents change no term of a background model (the
  background reads h^N, which sees them, so this holds with `h^N` fixed:
  the terms are a function of the slots and the background)."""
  params, _ = _with_background(MLP)
  images = _images(4)
  out = log_weight_terms(MLP, params, images, jax.random.key(4), 0.1)
  slots = out.slots._replace(presence=jnp.array([[1.0, 0.0, 0.0]] * 4),
                             active=jnp.array([[1.0, 1.0, 0.0]] * 4))

  def log_joint(z_what):
    s = slots._replace(z_what=z_what)
    log_p_presence, log_p_z = air.prior_log_probs(MLP, s, 0.1)
    canvas = air.render_slots(MLP, params, s)
    back = air.infer_background(MLP, params, s, jax.random.key(0)).image
    return (air.log_likelihood(MLP, images, canvas, back).sum() +
            log_p_presence.sum() + log_p_z.sum())

  grad = jax.jit(jax.grad(log_joint))(slots.z_what)
  np.testing.assert_array_equal(grad[:, 1:], 0.0)
  assert np.abs(grad[:, 0]).sum() > 0


def test_bad_background_settings_are_named():
  for kwargs, field in ((dict(background="photo"), "background="),
                        (dict(background_compose="max"), "background_compose"),
                        (dict(background_latent_dim=-1),
                         "background_latent_dim")):
    with pytest.raises(ValueError, match=field):
      air.AIRConfig(**kwargs)


# --- Exact enumeration with a background --------------------------------------
# The enumerable model of test_air, plus a background decoder whose output
# ignores its input: b is a fixed image B. Then p(x) = N(x | B, std) exactly
# (the canvas is empty), and with a latent z_bg the ELBO loses KL(q(z_bg) ||
# N(0, I)), q(z_bg) being N(loc bias, softplus(scale bias) + 1e-3).


def _enumerable_background(config, pixel_logits):
  params = _enumerable_params(TINY, jax.random.key(0))
  net = air.init_params(config, jax.random.key(1))["background_net"]
  net = jax.tree.map(lambda x: x, net)
  last = sorted(k for k in net["decoder"] if k.startswith("Dense"))[-1]
  net["decoder"][last]["kernel"] = jnp.zeros_like(
      net["decoder"][last]["kernel"])
  net["decoder"][last]["bias"] = pixel_logits.reshape(-1)
  if config.background_latent_dim:
    d = config.background_latent_dim
    for part in ("loc", "scale"):
      net["posterior"][part]["kernel"] = jnp.zeros_like(
          net["posterior"][part]["kernel"])
    net["posterior"]["loc"]["bias"] = jnp.linspace(-0.5, 0.7, d)
    net["posterior"]["scale"]["bias"] = jnp.linspace(-1.0, 0.5, d)
  return {**params, "background_net": net}


@pytest.mark.parametrize("config", [MLP, LATENT], ids=["h_N", "latent"])
def test_elbo_and_log_marginal_match_enumeration_with_a_background(config):
  pixel_logits = jax.random.normal(jax.random.key(9), (16, 16))
  params = _enumerable_background(config, pixel_logits)
  back = np.asarray(jax.nn.sigmoid(pixel_logits), np.float64)
  image = _images(1, seed=7)[0]
  images = jnp.broadcast_to(image, (NUM_MC,) + image.shape)
  out = log_weight_terms(config, params, images, jax.random.key(8), RHO)
  np.testing.assert_allclose(out.background[0], back, rtol=1e-5)
  # Objects' part of the exact ELBO from test_air (its likelihood's mean is
  # 0), then the likelihood moved to mean B and the background's KL.
  exact_elbo, log_lik_black = _exact(TINY, params, image)
  log_px = stats.norm.logpdf(np.asarray(image, np.float64), back,
                             TINY.likelihood_std).sum()
  exact_elbo = exact_elbo - log_lik_black + log_px
  if config.background_latent_dim:
    softplus = lambda x: np.log1p(np.exp(np.asarray(x, np.float64)))
    net = params["background_net"]["posterior"]
    exact_elbo -= _gauss_kl(net["loc"]["bias"],
                            softplus(net["scale"]["bias"]) + 1e-3,
                            np.zeros(config.background_latent_dim),
                            np.ones(config.background_latent_dim))
  check_against_exact(out.terms, exact_elbo, log_px)
  # Not vacuous: the background moves log p(x) far from the black model's.
  assert abs(log_px - log_lik_black) > 10


def test_sample_prior_draws_the_background_from_its_latent():
  params = air.init_params(LATENT, jax.random.key(0))
  presence, _, _, canvas = jax.jit(air.sample_prior, static_argnums=(0, 3))(
      LATENT, params, jax.random.key(1), 4, 0.0)
  np.testing.assert_array_equal(presence, 0.0)
  canvas = np.asarray(canvas)
  assert canvas.min() > 0  # no objects: the canvas is the background alone
  assert np.abs(canvas[0] - canvas[1]).max() > 0  # z_bg differs per scene


def test_background_scores_in_closed_form():
  from apdr_jax import evaluation
  digits = np.zeros((2, 4, 4))
  digits[:, 1, 1] = 1.0   # one full-ink pixel
  digits[:, 2, 2] = 0.05  # too faint to count as ink
  back = np.full((2, 4, 4), 0.3)
  images = digits + (1 - digits) * back
  exact = evaluation.background_scores(images, images, back, back)
  assert exact == dict(reconstruction_mse=0.0, background_mse=0.0,
                       background_ink_absorbed=0.0)
  swallowed = evaluation.background_scores(images, images, back, images)
  np.testing.assert_allclose(swallowed["background_ink_absorbed"], 1.0)
  assert swallowed["background_mse"] > 0  # the faint pixel is off the ink
  none = evaluation.background_scores(images, 0 * images, back, None)
  np.testing.assert_allclose(none["background_mse"], 0.09)
  np.testing.assert_allclose(none["background_ink_absorbed"], 0.0)
  np.testing.assert_allclose(none["reconstruction_mse"],
                             np.mean(images ** 2))


def test_presence_floor_is_a_mixture_that_keeps_the_gradient():
  """`min_presence=f`: q's presence probability is `f + (1 - f) p`, and the
  log-weight's presence terms are those of that q (scipy's Bernoulli)."""
  params = air.init_params(TINY, jax.random.key(0))
  images = _images(64)
  plain = jax.jit(air.infer, static_argnums=0)(TINY, params, images,
                                               jax.random.key(3))
  floored = jax.jit(air.infer, static_argnums=0)(
      TINY, params, images, jax.random.key(3), min_presence=0.5)
  # Slot 0 reads the image alone (later slots read the sampled latents,
  # which the floor changes).
  np.testing.assert_allclose(floored.presence_prob[:, 0],
                             0.5 + 0.5 * plain.presence_prob[:, 0], rtol=1e-6)
  active = np.asarray(floored.active) > 0
  expected = stats.bernoulli.logpmf(np.asarray(floored.presence),
                                    np.asarray(floored.presence_prob))
  np.testing.assert_allclose(np.asarray(floored.log_q_presence)[active],
                             expected[active], rtol=1e-5, atol=1e-6)

  def mean_prob(p):
    return air.infer(TINY, p, images, jax.random.key(3),
                     min_presence=0.9).presence_prob.mean()
  grad = jax.grad(mean_prob)(params)["presence_head"]["bias"]
  assert np.abs(np.asarray(grad)).sum() > 0


def test_background_detail_weight_flattens_the_background():
  """`background_detail=0`: the background is its own spatial mean (flat);
  1: the decoder's; in between, the mixture."""
  params, _ = _with_background(MLP)
  slots = jax.jit(air.infer, static_argnums=0)(MLP, params, _images(3),
                                               jax.random.key(1))
  key = jax.random.key(0)
  full = air.infer_background(MLP, params, slots, key).image
  flat = air.infer_background(MLP, params, slots, key,
                              background_detail=jnp.float32(0)).image
  half = air.infer_background(MLP, params, slots, key,
                              background_detail=jnp.float32(0.5)).image
  np.testing.assert_allclose(flat, np.broadcast_to(
      np.asarray(full).mean((1, 2), keepdims=True), full.shape), rtol=1e-6)
  np.testing.assert_allclose(half, 0.5 * (np.asarray(full) + flat), rtol=1e-5)
  assert np.asarray(full).std(axis=(1, 2)).min() > 0


# --- APDR: one background per frame ------------------------------------------


def test_apdr_frames_compose_the_objects_over_their_background():
  """APDR with `model.background`: every frame's likelihood is scipy's density
  at the same objects' canvas composed over the frame's background (a decoder
  held at a fixed image B here), and with a background latent the terms still
  add up to `log_likelihood - kl`."""
  from apdr_jax import apdr
  from test_apdr import TINY as APDR_TINY
  from test_apdr import _sequences
  with_bg = dataclasses.replace(
      APDR_TINY, air=dataclasses.replace(APDR_TINY.air, background="mlp"))
  plain_params = apdr.init_params(APDR_TINY, jax.random.key(0))
  net = apdr.init_params(with_bg, jax.random.key(0))["air"]["background_net"]
  net = jax.tree.map(lambda x: x, net)
  logits = jax.random.normal(jax.random.key(5), (16, 16))
  net["decoder"]["Dense_1"]["kernel"] = jnp.zeros_like(
      net["decoder"]["Dense_1"]["kernel"])
  net["decoder"]["Dense_1"]["bias"] = logits.reshape(-1)
  params = {**plain_params,
            "air": {**plain_params["air"], "background_net": net}}
  sequences = _sequences(3, 4)
  run = jax.jit(lambda c, p: apdr.log_weight_terms(
      c, p, sequences, jax.random.key(1), 0.3, with_canvas=True),
      static_argnums=0)
  plain, out = run(APDR_TINY, plain_params), run(with_bg, params)
  np.testing.assert_allclose(out.frames.z_where, plain.frames.z_where)
  back = np.asarray(jax.nn.sigmoid(logits))
  objects = np.asarray(plain.frames.canvas)
  mean = objects + (1 - np.minimum(objects, 1)) * back
  np.testing.assert_allclose(out.frames.canvas, mean, rtol=1e-5, atol=1e-6)
  expected = stats.norm.logpdf(np.asarray(sequences), mean,
                               APDR_TINY.air.likelihood_std).sum((-2, -1))
  np.testing.assert_allclose(out.frames.log_likelihood, expected, rtol=1e-5)
  latent = dataclasses.replace(
      APDR_TINY, air=dataclasses.replace(APDR_TINY.air, background="mlp",
                                         background_latent_dim=2))
  out = run(latent, apdr.init_params(latent, jax.random.key(2)))
  np.testing.assert_allclose(out.terms.sum(-1), out.log_likelihood - out.kl,
                             rtol=1e-5, atol=1e-3)
