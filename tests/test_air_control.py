"""REBAR and RELAX on AIR itself: the same expected gradient as plain
REINFORCE (both unbiased), with less variance, and RELAX's network trained on
the variance alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import air
from apdr_jax import air_control
from apdr_jax import objectives

RHO = 0.4


def _config(relax=False):
  return air.AIRConfig(canvas_size=20, num_slots=2, glimpse_size=8,
                       z_what_dim=4, lstm_size=16, mlp_size=16,
                       presence_init=0.5, relax_control=relax)


def _loss(config, estimator, params, images, rng, temperature=0.5, scale=1.0):
  reference = estimator == "reinforce"
  out = air.log_weight_terms(config, params, images, rng, RHO,
                             rebar_noise=not reference)
  if reference:  # the score function with the bare signal: unbiased
    state = objectives.NVILState(jnp.zeros(3), jnp.ones(3))
    return objectives.nvil(out.terms, out.score_log_q,
                           jnp.zeros_like(out.terms), state,
                           normalise=False).loss
  control = air_control.controls(config, params, images, out.slots, RHO,
                                 out.terms, temperature, scale,
                                 relax=estimator == "relax")
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 1)))
  return objectives.rebar(out.terms, out.score_log_q, pad(control.at_z),
                          pad(control.at_z_tilde), control.variance_loss,
                          objectives.nvil_init(3)).loss


def _presence_head_grads(config, estimator, params, images, chunks, **control):
  """The presence head's gradient, one estimate per chunk of images (each
  the mean of the chunk's per-image estimates), `[chunks, P]`."""
  grad = jax.jit(jax.grad(lambda p, k: _loss(config, estimator, p, images, k,
                                             **control)))
  out = []
  for key in jax.random.split(jax.random.key(7), chunks):
    g = grad(params, key)["presence_head"]
    out.append(np.concatenate([np.ravel(g["kernel"]), np.ravel(g["bias"])]))
  return np.stack(out)


@pytest.fixture(scope="module")
def inputs():
  params = air.init_params(_config(relax=True), jax.random.key(0))
  # One image repeated: every estimate is of the same expected gradient.
  image = jax.random.uniform(jax.random.key(1), (1, 20, 20)) ** 4
  return params, jnp.broadcast_to(image, (256, 20, 20))


def _assert_same_mean(a, b, what):
  stderr = np.sqrt((a.var(0) + b.var(0)) / a.shape[0])
  np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)),
                               4 * stderr + 1e-4, err_msg=what)


def test_rebar_and_relax_agree_with_reinforce_and_have_less_variance(inputs):
  """Every control variate gives the same expected gradient. REINFORCE's
  is too noisy to tell a small bias; two REBAR control variates (another
  temperature and scale) and RELAX's (a random network) are not: a control
  variate without its correction term, biased by its own expected score
  term, fails here."""
  params, images = inputs
  plain = {k: v for k, v in params.items() if k != "relax_baseline"}
  chunks = 48
  reference = _presence_head_grads(_config(), "reinforce", plain, images,
                                   chunks)
  rebar = _presence_head_grads(_config(), "rebar", plain, images, chunks)
  other = _presence_head_grads(_config(), "rebar", plain, images, chunks,
                               temperature=1.0, scale=0.5)
  relax = _presence_head_grads(_config(relax=True), "relax", params, images,
                               chunks)
  _assert_same_mean(rebar, reference, "rebar against reinforce")
  _assert_same_mean(rebar, other, "rebar at two temperatures and scales")
  _assert_same_mean(relax, rebar, "relax against rebar")
  # The bias row carries the decisions' whole credit (on this image: 40
  # for REINFORCE, 0.07 for REBAR when measured).
  assert rebar[:, -1].var() < 0.1 * reference[:, -1].var()
  assert relax[:, -1].var() < 0.1 * reference[:, -1].var()


def test_relax_variance_loss_reaches_its_network_only(inputs):
  params, images = inputs
  config = _config(relax=True)

  def variance(p):
    out = air.log_weight_terms(config, p, images[:32], jax.random.key(3), RHO,
                               rebar_noise=True)
    return air_control.controls(config, p, images[:32], out.slots, RHO,
                                out.terms, 0.5, 1.0, relax=True).variance_loss
  grads = jax.jit(jax.grad(variance))(params)
  for name, tree in grads.items():
    total = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(tree))
    if name == "relax_baseline":
      assert total > 0, name
    else:
      assert total == 0, name


def test_surrogate_gives_the_network_no_gradient(inputs):
  """The network learns from the variance only: the surrogate's own value
  must not train it (its part of the loss is its variance objective)."""
  params, images = inputs
  config = _config(relax=True)

  def surrogate_only(p):
    out = air.log_weight_terms(config, p, images[:32], jax.random.key(4), RHO,
                               rebar_noise=True)
    control = air_control.controls(config, p, images[:32], out.slots, RHO,
                                   out.terms, 0.5, 1.0, relax=True)
    return (control.at_z - control.at_z_tilde).sum()
  grads = jax.jit(jax.grad(surrogate_only))(params)
  assert all(float(jnp.abs(x).sum()) == 0
             for x in jax.tree.leaves(grads["relax_baseline"]))
