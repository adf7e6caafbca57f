"""`APDRConfig.survival_ink`: the prior's survival probability of an object
scales with the ink it drew, so that objects drawing nothing (a digit that
has left, a blank "ghost") are cheap to forget and costly to keep."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import glimpse
from apdr_jax.apdr import propagation
from apdr_jax.errors import ConfigError
from apdr_jax import run_config
from configs import tiny_apdr

TINY_AIR = air.AIRConfig(canvas_size=16, num_slots=2, glimpse_size=6,
                         z_what_dim=3, lstm_size=12, mlp_size=10, context_dim=8)
TINY = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8,
                       survival_ink=20.0)
PSI = 0.9


def _all_ones_params(config):
  """Random networks, except: the decoder draws an (almost) all-ones
  glimpse, and the prior's survival probability is the constant PSI."""
  p = jax.device_get(apdr.init_params(config, jax.random.key(0)))
  p = jax.tree.map(np.array, p)
  last = sorted(k for k in p["air"]["decoder"] if k.startswith("Dense"))[-1]
  p["air"]["decoder"][last]["kernel"][:] = 0.0
  p["air"]["decoder"][last]["bias"][:] = 30.0
  p["prior_survival"]["kernel"][:] = 0.0
  p["prior_survival"]["bias"][:] = math.log(PSI / (1 - PSI))
  return jax.tree.map(jnp.asarray, p)


def _objects(z_where):
  """Objects `[1, N]` at the given `z_where` `[N, 3]`, all present."""
  z_where = jnp.asarray(z_where, jnp.float32)[None]
  n = z_where.shape[1]
  return apdr.Objects(z_where, jnp.zeros((1, n, TINY_AIR.z_what_dim)),
                      jnp.ones((1, n)), jnp.zeros((1, n), jnp.int32),
                      None, jnp.zeros((1, n, 3)))


def test_drawn_ink_is_the_area_the_object_covers_on_the_canvas():
  """An all-ones glimpse at inverse scale s covers a (16 / s)-pixel square:
  its ink is that area (less the bilinear fall-off at its border), half of
  it when its centre sits on the canvas's edge, none beyond the edge."""
  params = _all_ones_params(TINY)
  ink = np.asarray(propagation.drawn_ink(TINY, params, _objects(
      [[2.0, 0.0, 0.0], [4.0, 0.0, 0.0], [2.0, 1.0, 0.0], [2.0, 0.0, -1.0],
       [2.0, 1.6, 0.0], [2.0, 0.0, 2.0]])))[0]
  assert ink[0] == pytest.approx(64.0, rel=0.15)
  assert ink[1] == pytest.approx(16.0, rel=0.3)
  assert ink[2] == pytest.approx(ink[0] / 2, rel=0.02)
  assert ink[3] == pytest.approx(ink[0] / 2, rel=0.02)
  assert ink[4] == pytest.approx(0.0, abs=1e-3)
  assert ink[5] == pytest.approx(0.0, abs=1e-3)


def test_drawn_ink_against_a_gather_rendering():
  """The same sums from the other rendering code path, one object at a time,
  for random glimpses and places (`separable` against `gather`)."""
  params = apdr.init_params(TINY, jax.random.key(3))
  keys = jax.random.split(jax.random.key(4), 2)
  z_where = jnp.concatenate([
      jax.random.uniform(keys[0], (5, 1), minval=1.5, maxval=4.0),
      jax.random.uniform(keys[1], (5, 2), minval=-1.3, maxval=1.3)], -1)
  objects = _objects(z_where)._replace(
      z_what=jax.random.normal(jax.random.key(5), (1, 5, 3)))
  drawings = air.decode(TINY_AIR, params["air"], objects.z_what[0])
  expected = glimpse.render(drawings, objects.z_where[0], 16, 16,
                            "gather").sum((-2, -1))
  np.testing.assert_allclose(
      propagation.drawn_ink(TINY, params, objects)[0], expected, rtol=1e-4,
      atol=1e-4)


def test_the_prior_survival_of_each_object_scales_with_its_ink():
  """Frame 1's prior survival probabilities are PSI * clip(ink / c, 1e-3, 1),
  the ink computed from the objects frame 0 found; off, they are PSI.
  (c = 200 here: the objects random networks find are large.)"""
  config = dataclasses.replace(TINY, survival_ink=200.0)
  params = _all_ones_params(config)
  x = jnp.zeros((4, 2, 16, 16)).at[:, :, 4:12, 2:10].set(1.0)
  rng = jax.random.key(1)
  out = apdr.log_weight_terms(config, params, x, rng, 0.9).frames
  present = np.asarray(out.presence[:, 0]) > 0
  assert present.sum() >= 3  # discovery found objects to test on
  inks = []
  for b in range(x.shape[0]):
    objects = _objects(out.z_where[b, 0])._replace(z_what=out.z_what[b, 0][None])
    inks.append(np.asarray(glimpse.render(
        air.decode(TINY_AIR, params["air"], objects.z_what[0]),
        objects.z_where[0], 16, 16, "gather").sum((-2, -1))))
  expected = PSI * np.clip(np.stack(inks) / config.survival_ink, 1e-3, 1.0)
  got = np.asarray(out.prior_survival[:, 1])
  np.testing.assert_allclose(got[present], expected[present], rtol=1e-4)
  assert np.any(expected[present] < PSI * 0.99)  # the factor is exercised
  off = dataclasses.replace(config, survival_ink=0.0)
  got_off = np.asarray(apdr.log_weight_terms(off, params, x, rng, 0.9)
                       .frames.prior_survival[:, 1])
  np.testing.assert_allclose(got_off[present], PSI, rtol=1e-5)


def test_q_survival_is_scaled_by_the_same_factor_with_survival_ink_q():
  """Same networks, frames and keys: the first propagated object's q
  survival probability in frame 1 with `survival_ink_q` is the one without
  it times the prior's factor (later objects' inputs depend on what the
  first one decided)."""
  config = dataclasses.replace(TINY, survival_ink=200.0)
  params = _all_ones_params(config)
  x = jnp.zeros((16, 2, 16, 16)).at[:, :, 4:12, 2:10].set(1.0)
  run = lambda c: apdr.log_weight_terms(c, params, x, jax.random.key(1),
                                        0.9).frames
  plain = run(config)
  scaled = run(dataclasses.replace(config, survival_ink_q=True))
  present = np.asarray(plain.presence[:, 0, 0]) > 0
  assert present.sum() >= 3
  factor = np.asarray(plain.prior_survival[:, 1, 0]) / PSI
  assert np.any(factor[present] < 0.99)
  np.testing.assert_allclose(np.asarray(scaled.q_survival[:, 1, 0])[present],
                             (np.asarray(plain.q_survival[:, 1, 0]) *
                              factor)[present], rtol=1e-4)


def test_an_object_beyond_the_canvas_gets_the_floor():
  """An object placed beyond the canvas draws nothing: its factor is the
  floor 1e-3 (keeping it costs -log(PSI * 1e-3) nats a frame); one that
  draws more than `survival_ink` keeps the factor 1."""
  params = _all_ones_params(TINY)
  objects = _objects([[2.0, 0.0, 0.0], [2.0, 3.0, 0.0]])
  factor = np.asarray(propagation.ink_visibility(TINY, params, objects))[0]
  np.testing.assert_allclose(factor, [1.0, 1e-3], rtol=1e-5)
  off = dataclasses.replace(TINY, survival_ink=0.0)
  np.testing.assert_array_equal(
      propagation.ink_visibility(off, params, objects), 1.0)


def test_survival_ink_is_validated_and_read_from_the_config():
  with pytest.raises(ValueError, match="survival_ink"):
    dataclasses.replace(TINY, survival_ink=-1.0)
  with pytest.raises(ValueError, match="survival_ink_q needs"):
    dataclasses.replace(TINY, survival_ink=0.0, survival_ink_q=True)
  config = tiny_apdr.get_config()
  config.apdr.survival_ink = -2.0
  with pytest.raises(ConfigError, match="survival_ink"):
    run_config.model_config(config)
  config.apdr.survival_ink = 3.0
  assert run_config.model_config(config).survival_ink == 3.0
