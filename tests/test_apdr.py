"""APDR: shapes, masking, compaction and ids, and the per-time-step log-weights
against the exact sequence ELBO by enumeration (notes §8.3, DESIGN §3.3)."""

import dataclasses
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import glimpse
from apdr_jax import ink
from apdr_jax import networks
from apdr_jax import objectives

TINY_AIR = air.AIRConfig(canvas_size=16, num_slots=2, glimpse_size=6,
                         z_what_dim=3, lstm_size=12, mlp_size=10, context_dim=8)
TINY = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8)


def _sequences(batch, frames, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, frames, 16, 16))


@pytest.fixture(scope="module")
def params():
  return apdr.init_params(TINY, jax.random.key(0))


def test_shapes(params):
  batch, frames, n = 3, 4, TINY.num_slots
  out = jax.jit(lambda p, x, k: apdr.log_weight_terms(
      TINY, p, x, k, 0.3, with_canvas=True))(params, _sequences(batch, frames),
                                               jax.random.key(1))
  s = frames * (2 * n + 1)
  for field in (out.terms, out.score_log_q, out.baseline):
    chex.assert_shape(field, (batch, s))
  chex.assert_shape([out.log_likelihood, out.kl], (batch,))
  chex.assert_shape(out.frames.z_where, (batch, frames, n, 3))
  chex.assert_shape([out.frames.presence, out.frames.ids], (batch, frames, n))
  chex.assert_shape(out.frames.canvas, (batch, frames, 16, 16))
  chex.assert_tree_all_finite(out)
  # The likelihood and KL parts add up to the log-weight.
  np.testing.assert_allclose(out.terms.sum(-1), out.log_likelihood - out.kl,
                             rtol=1e-5, atol=1e-3)


def test_frames_beyond_num_frames_are_skipped_with_zero_log_weights(params):
  """A curriculum stage as a value: the first frames equal a cut sequence's,
  and every output of the skipped frames, the log-weight terms included, is
  exactly 0 (so are their gradients)."""
  batch, frames, stage = 2, 4, 2
  sequences = _sequences(batch, frames)
  per_frame = 2 * TINY.num_slots + 1
  run = jax.jit(lambda p, x, n: apdr.log_weight_terms(
      TINY, p, x, jax.random.key(1), 0.3, with_canvas=True, num_frames=n))
  masked = run(params, sequences, jnp.asarray(stage))
  cut = jax.jit(lambda p, x: apdr.log_weight_terms(
      TINY, p, x, jax.random.key(1), 0.3, with_canvas=True))(
          params, sequences[:, :stage])
  chex.assert_shape(masked.terms, (batch, frames * per_frame))
  np.testing.assert_allclose(masked.terms[:, :stage * per_frame], cut.terms,
                             rtol=1e-6, atol=1e-5)
  for field in jax.tree.leaves(masked.frames):
    assert np.all(np.asarray(field)[:, stage:] == 0)
  assert np.all(np.asarray(masked.terms)[:, stage * per_frame:] == 0)
  np.testing.assert_allclose(masked.log_likelihood, cut.log_likelihood,
                             rtol=1e-6)
  # The same traced function reads all frames when told to.
  full = run(params, sequences, jnp.asarray(frames))
  likelihoods = np.asarray(full.terms).reshape(batch, frames, per_frame)[..., -1]
  assert np.all(likelihoods != 0)
  # Gradients: the skipped frames contribute nothing, recomputed (remat, as
  # in training) or stored.
  grad = lambda n, x, remat=False: jax.grad(lambda p: apdr.log_weight_terms(
      TINY, p, x, jax.random.key(1), 0.3, num_frames=n,
      remat=remat).terms.sum())(params)
  g_cut = jax.jit(lambda x: grad(None, x))(sequences[:, :stage])
  for remat in (False, True):
    g_masked = jax.jit(lambda n, x, r=remat: grad(n, x, r))(
        jnp.asarray(stage), sequences)
    chex.assert_trees_all_close(g_masked, g_cut, rtol=1e-4, atol=1e-5)


def test_config_rejects_mismatched_context():
  with pytest.raises(ValueError, match="context_dim"):
    apdr.APDRConfig(air=TINY_AIR, relation_size=5)


def _set_presence(params, survival_logit=None, discovery_logit=None):
  """Makes q's survival / discovery presence probability a constant."""
  params = jax.tree.map(lambda x: x, params)  # a copy
  if survival_logit is not None:
    head = params["prop_presence"]
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.full_like(head["bias"], survival_logit)
  if discovery_logit is not None:
    head = params["air"]["presence_head"]
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.full_like(head["bias"], discovery_logit)
  return params


def test_ids_persist_while_objects_survive(params):
  """Survival certain: the first frame's objects keep their ids and slots,
  and nothing is discovered once all N slots are taken (N - k_t = 0)."""
  p = _set_presence(params, survival_logit=30.0, discovery_logit=30.0)
  out = apdr.log_weight_terms(TINY, p, _sequences(2, 5), jax.random.key(3), 0.5)
  ids = np.asarray(out.frames.ids)
  np.testing.assert_array_equal(ids, np.broadcast_to([0, 1], ids.shape))
  np.testing.assert_array_equal(out.frames.num_discovered[:, 1:], 0)
  np.testing.assert_array_equal(out.frames.num_propagated[:, 1:], 2)


def test_forgotten_objects_free_their_slots_and_new_ones_get_new_ids(params):
  """Survival impossible: every frame forgets all objects and rediscovers
  N new ones, whose ids continue from the last."""
  p = _set_presence(params, survival_logit=-30.0, discovery_logit=30.0)
  out = apdr.log_weight_terms(TINY, p, _sequences(2, 4), jax.random.key(3), 0.5)
  expected = np.array([[2 * t, 2 * t + 1] for t in range(4)])
  np.testing.assert_array_equal(out.frames.ids,
                                np.broadcast_to(expected, (2, 4, 2)))
  np.testing.assert_array_equal(out.frames.num_propagated, 0)


def test_survival_floor_keeps_objects_during_the_warm_up(params):
  """`min_survival` near 1 overrides a network that would forget everything,
  and the log q of the decisions is that of the floored probability."""
  p = _set_presence(params, survival_logit=-30.0, discovery_logit=30.0)
  out = apdr.log_weight_terms(TINY, p, _sequences(2, 3), jax.random.key(3),
                              0.5, min_survival=0.999)
  np.testing.assert_array_equal(out.frames.num_propagated[:, 1:], 2)
  np.testing.assert_array_equal(out.frames.ids,
                                np.broadcast_to([0, 1], (2, 3, 2)))
  prop_log_q = out.score_log_q.reshape(2, 3, -1)[:, 1:, :2]
  np.testing.assert_allclose(prop_log_q, np.log(0.999), rtol=1e-4)


def test_discovery_input_is_validated():
  with pytest.raises(ValueError, match="discovery_input"):
    apdr.APDRConfig(air=TINY_AIR, relation_size=8, discovery_input="diff")


def test_discovery_on_the_image_or_the_residual_differ_only_after_frame_0(
    params):
  """Frame 0 has nothing propagated: both inputs give the same first frame."""
  image_config = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8,
                                 discovery_input="image")
  x = _sequences(2, 2)
  residual = apdr.log_weight_terms(TINY, params, x, jax.random.key(4), 0.3)
  on_image = apdr.log_weight_terms(image_config, params, x, jax.random.key(4),
                                   0.3)
  np.testing.assert_allclose(residual.frames.terms[:, 0],
                             on_image.frames.terms[:, 0], rtol=1e-5, atol=1e-4)


def _hand_wired_params(config: apdr.APDRConfig):
  """Weights set by hand so that the networks' own decisions follow the image.

  Every weight is 0 except:
  * propagation: the glimpse at an object's previous location feeds its mean
    intensity `m` through `prop_glimpse` and `prop_core` to the survival head,
    `logit = 40 m - 2`: an object survives while its glimpse shows ink;
    `z_where` stays where it was;
  * discovery (AIR): the LSTM's first unit is `tanh(tanh(S - 2))`, `S` the
    summed intensity of what discovery looks at, and is pushed far negative
    once the previous step found an object; presence `logit = 20 h_0 - 5`,
    `z_where` at the prior mean (the centre);
  * the decoder draws an all-ones glimpse, so a propagated object hides the
    ink in its window from a residual.
  """
  a = config.air
  g2, latent_dim = a.glimpse_size ** 2, 3 + a.z_what_dim + 1
  p = jax.tree.map(np.zeros_like, jax.device_get(apdr.init_params(
      config, jax.random.key(0))))
  p["prop_glimpse"]["Dense_0"]["kernel"][:, 0] = 1.0 / g2
  p["prop_glimpse"]["Dense_1"]["kernel"][0, 0] = 1.0
  p["prop_core"]["Dense_0"]["kernel"][0, 0] = 1.0  # features come first
  p["prop_core"]["Dense_1"]["kernel"][0, 0] = 1.0
  p["prop_presence"]["kernel"][0, 0] = 40.0
  p["prop_presence"]["bias"][0] = -2.0
  rnn, units = p["air"]["rnn"], a.lstm_size  # gates i, f, g, o
  rnn["image"]["kernel"][:, 2 * units] = 1.0  # g_0 = S - 2
  rnn["image"]["bias"][2 * units] = -2.0
  rnn["image"]["bias"][0] = 10.0  # i_0: write
  rnn["image"]["bias"][units] = -10.0  # f_0: forget
  rnn["image"]["bias"][3 * units] = 10.0  # o_0: read
  rnn["latent"]["kernel"][latent_dim - 1, 2 * units] = -100.0  # one found
  p["air"]["presence_head"]["kernel"][0, 0] = 20.0
  p["air"]["presence_head"]["bias"][0] = -5.0
  p["air"]["decoder"]["Dense_1"]["bias"][:] = 10.0
  return jax.tree.map(jnp.asarray, p)


def _centre_square(frames_with_ink, num_frames, size=16):
  """`[1, T, size, size]`: a 4x4 square at the centre in the listed frames."""
  x = np.zeros((1, num_frames, size, size), np.float32)
  for t in frames_with_ink:
    x[0, t, 6:10, 6:10] = 1.0
  return jnp.asarray(x)


def _decompose(config, params, sequences):
  out = apdr.log_weight_terms(config, params, sequences, jax.random.key(0),
                              0.3, deterministic=True)
  f = out.frames
  return (np.asarray(f.presence.sum(-1))[0], np.asarray(f.ids)[0],
          np.asarray(f.num_discovered)[0], np.asarray(f.num_propagated)[0])


def test_a_digit_that_leaves_is_forgotten_and_one_that_enters_is_found():
  """Hand-made sequences through networks wired by hand (no forced decisions):
  the decisions come from the glimpse at the previous location (survival) and
  from the residual (discovery)."""
  params = _hand_wired_params(TINY)
  # Present, then gone: discovered in frame 0, forgotten in frame 1.
  counts, ids, found, kept = _decompose(TINY, params, _centre_square([0], 3))
  np.testing.assert_array_equal(counts, [1, 0, 0])
  np.testing.assert_array_equal(found, [1, 0, 0])
  np.testing.assert_array_equal(kept, [0, 0, 0])
  np.testing.assert_array_equal(ids[:, 0], [0, -1, -1])
  # Absent, then enters and stays: discovered once, then propagated with the
  # same id (the residual hides it from discovery).
  counts, ids, found, kept = _decompose(TINY, params,
                                        _centre_square([1, 2, 3], 4))
  np.testing.assert_array_equal(counts, [0, 1, 1, 1])
  np.testing.assert_array_equal(found, [0, 1, 0, 0])
  np.testing.assert_array_equal(kept, [0, 0, 1, 1])
  np.testing.assert_array_equal(ids[:, 0], [-1, 0, 0, 0])
  # Leaves and comes back: a new object with a new id.
  counts, ids, found, _ = _decompose(TINY, params, _centre_square([0, 2], 3))
  np.testing.assert_array_equal(counts, [1, 0, 1])
  np.testing.assert_array_equal(ids[:, 0], [0, -1, 1])


def _square_at(columns_per_frame, size=16):
  """`[1, T, size, size]`: a 4x4 square in rows 6:10 at the given columns."""
  x = np.zeros((1, len(columns_per_frame), size, size), np.float32)
  for t, column in enumerate(columns_per_frame):
    x[0, t, 6:10, column:column + 4] = 1.0
  return jnp.asarray(x)


@pytest.mark.parametrize("glimpse_at", ["prior", "previous"])
def test_a_jump_the_prior_predicts_is_tracked_only_with_the_prior_glimpse(
    glimpse_at):
  """The square jumps 6 px to the right, out of a glimpse at its previous
  place, and the prior's transition predicts the jump (x + 0.75). Looking
  where the prior predicts keeps the object and its id; looking at the
  previous place sees no ink, forgets it and discovers it again."""
  config = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8,
                           propagation_glimpse=glimpse_at)
  params = _hand_wired_params(config)
  params["prior_where"]["loc"]["bias"] = jnp.array([0.0, 0.75, 0.0])
  out = apdr.log_weight_terms(config, params, _square_at([6, 12]),
                              jax.random.key(0), 0.3, deterministic=True)
  f = out.frames
  counts, ids = np.asarray(f.presence.sum(-1))[0], np.asarray(f.ids)[0]
  kept, found = np.asarray(f.num_propagated)[0], np.asarray(f.num_discovered)[0]
  np.testing.assert_array_equal(counts, [1, 1])
  if glimpse_at == "prior":
    np.testing.assert_array_equal(kept, [0, 1])
    np.testing.assert_array_equal(found, [1, 0])
    np.testing.assert_array_equal(ids[:, 0], [0, 0])
    # q's z_where is an offset (0 here) from the prior's prediction.
    np.testing.assert_allclose(np.asarray(f.z_where)[0, 1, 0, 1], 0.75,
                               atol=1e-6)
  else:
    np.testing.assert_array_equal(kept, [0, 0])
    np.testing.assert_array_equal(found, [1, 1])
    np.testing.assert_array_equal(ids[:, 0], [0, 1])


def test_without_the_residual_a_propagated_digit_is_found_again():
  """The control for the test above: discovery on the raw frame sees the
  propagated digit too, so the same wiring counts it twice."""
  on_image = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8,
                             discovery_input="image")
  params = _hand_wired_params(on_image)
  counts, ids, found, kept = _decompose(on_image, params,
                                        _centre_square([0, 1], 2))
  np.testing.assert_array_equal(counts, [1, 2])
  np.testing.assert_array_equal(found, [1, 1])
  np.testing.assert_array_equal(kept, [0, 1])
  np.testing.assert_array_equal(ids[1], [0, 1])


def test_compaction_is_stable_and_keeps_ids_and_prior_states():
  """Slot 0 forgotten, slot 1 propagated, one object discovered."""
  n, d, h = 2, TINY_AIR.z_what_dim, TINY.hidden_size
  fresh_params = apdr.init_params(TINY, jax.random.key(5))
  prior_prev = networks.LSTMState(jnp.arange(n * h, dtype=jnp.float32).reshape(
      1, n, h), -jnp.ones((1, n, h)))
  carry = apdr.Carry(
      apdr.Objects(jnp.zeros((1, n, 3)), jnp.zeros((1, n, d)),
                   jnp.ones((1, n)), jnp.array([[4, 7]], jnp.int32),
                   prior_prev, jnp.ones((1, n, 3))), None,
      jnp.array([9], jnp.int32))
  prop = apdr.Propagated(
      z_where=jnp.array([[[1., 0, 0], [2., 0.5, -1]]]), z_what=jnp.zeros((1, n, d)),
      presence=jnp.array([[0., 1.]]), active=jnp.ones((1, n)),
      log_q_presence=None, log_q_z=None, log_p_presence=None, log_p_z=None,
      baseline=None, relation=None, prior_state=prior_prev)
  disc = air.Slots(jnp.array([[[3., 0, 0], [4., 0, 0]]]), jnp.zeros((1, n, d)),
                   jnp.array([[1., 0.]]), *([None] * 8))
  objects = apdr.frame.compact(TINY, fresh_params, carry, prop, disc)
  np.testing.assert_array_equal(objects.ids, [[7, 9]])
  np.testing.assert_array_equal(objects.presence, [[1., 1.]])
  np.testing.assert_array_equal(objects.z_where[0, :, 0], [2., 3.])
  # The survivor keeps its prior state; the newcomer gets the learned one.
  np.testing.assert_array_equal(objects.prior_state.hidden[0, 0],
                                prior_prev.hidden[0, 1])
  initial = fresh_params["prior_rnn"]["initial_hidden"]
  np.testing.assert_array_equal(objects.prior_state.hidden[0, 1], initial)
  # The survivor's velocity is its last move of position (its scale went
  # from 0 to 2, which does not count), the newcomer has none.
  np.testing.assert_array_equal(objects.velocity[0], [[0., 0.5, -1], [0, 0, 0]])


@pytest.mark.parametrize("constant_velocity", [True, False])
def test_constant_velocity_moves_the_prior_mean_and_q_glimpse(
    constant_velocity):
  """With zero learned corrections, the prior's z_where mean (and so q's
  anchor and its mode) is the previous location plus the last move, or the
  previous location alone without `constant_velocity`."""
  config = apdr.APDRConfig(air=TINY_AIR, hidden_size=10, relation_size=8,
                           propagation_glimpse="prior",
                           constant_velocity=constant_velocity)
  params = _hand_wired_params(config)
  carry = apdr.initial_carry(config, params, 1)
  where = jnp.array([[[2.5, -0.3, 0.1], [2.5, 0.0, 0.0]]])
  move = jnp.array([[[0.0, 0.2, -0.1], [0.0, 0.0, 0.0]]])
  carry = carry._replace(objects=carry.objects._replace(
      z_where=where, presence=jnp.array([[1., 0.]]), velocity=move,
      ids=jnp.array([[0, -1]], jnp.int32)))
  image = jnp.ones((1, 16, 16))  # ink everywhere: the object survives
  prop = apdr.propagate(config, params, image, carry,
                        carry.temporal, jax.random.key(0), deterministic=True)
  expected = where[0, 0] + (move[0, 0] if constant_velocity else 0.0)
  np.testing.assert_allclose(prop.z_where[0, 0], expected, atol=1e-6)
  assert prop.presence[0, 0] == 1.0


def test_absent_slots_contribute_nothing(params):
  """Garbage in the latents of absent slots changes no output and gets no
  gradient; inactive decisions have zero terms and zero log q."""
  n, d = TINY.num_slots, TINY_AIR.z_what_dim
  carry = apdr.initial_carry(TINY, params, 2)
  objects = carry.objects._replace(
      presence=jnp.array([[1., 0.], [0., 0.]]),
      z_where=jnp.tile(jnp.array([[2.5, 0.1, -0.2]]), (2, n, 1)),
      ids=jnp.array([[0, -1], [-1, -1]], jnp.int32))
  carry = carry._replace(objects=objects, next_id=jnp.array([1, 0], jnp.int32))
  image = _sequences(2, 1)[:, 0]
  gates = air.image_gates(TINY_AIR, params["air"], image)

  def log_weight(z_where, z_what):
    c = carry._replace(objects=carry.objects._replace(z_where=z_where,
                                                      z_what=z_what))
    _, out = apdr.frame_step(TINY, params, c, image, gates, jax.random.key(4),
                             0.3)
    return out.terms.sum(), out

  z_what = jax.random.normal(jax.random.key(6), (2, n, d))
  garbage_where = objects.z_where.at[:, 1].set(jnp.array([7.0, 3.0, -3.0]))
  garbage_what = z_what.at[:, 1].set(50.0)
  (value, out), grads = jax.jit(jax.value_and_grad(
      log_weight, argnums=(0, 1), has_aux=True))(objects.z_where, z_what)
  value_garbage, out_garbage = jax.jit(log_weight)(garbage_where, garbage_what)
  np.testing.assert_allclose(value, value_garbage, rtol=1e-6)
  chex.assert_trees_all_close(out.terms, out_garbage.terms)
  for g in grads:
    np.testing.assert_array_equal(g[:, 1], 0.0)
    np.testing.assert_array_equal(g[1], 0.0)
  assert np.any(np.asarray(grads[0][0, 0]) != 0)  # the present object matters
  # Sequence 1 had no objects: no propagation decision, zero terms and log q.
  np.testing.assert_array_equal(out.terms[1, :n], 0.0)
  np.testing.assert_array_equal(out.score_log_q[1, :n], 0.0)
  np.testing.assert_array_equal(out.num_propagated[1], 0.0)


# --- Exact enumeration -------------------------------------------------------
# With every head's kernel at zero, q's and the prior's presence
# probabilities are constants (survival PI_P under q and PSI under the prior,
# discovery PI_D under q and RHO under the prior), and every Gaussian is
# centred at (previous latent + a bias), so each object's continuous KL is a
# closed form that does not depend on the sampled past. With the decoder's
# output at sigmoid(-30) ~ 0 the likelihood is the constant C per frame, so
# log p(x_{1:T}) = T C exactly, and the sequence ELBO is an exact sum over
# the discrete histories (m_{t-1} -> survival bits -> k_t -> n_t).

PI_P, PSI, PI_D, RHO = 0.7, 0.85, 0.6, 0.35
FRAMES = 3
NUM_MC = 20_000


def _softplus(x):
  return np.log1p(np.exp(np.asarray(x, np.float64))) + 1e-3


def _zero_kernels(tree):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key == "kernel" else x, tree)


def _enumerable_params(rng, config=TINY):
  p = apdr.init_params(config, rng)
  a = p["air"]
  a["presence_head"] = {"kernel": jnp.zeros_like(a["presence_head"]["kernel"]),
                        "bias": jnp.full((1,), math.log(PI_D / (1 - PI_D)))}
  for head in ("where_head", "what_encoder"):
    for part in ("loc", "scale"):
      a[head][part] = _zero_kernels(a[head][part])
  a["where_head"]["loc"]["bias"] = jnp.array([0.2, -0.1, 0.3])
  a["where_head"]["scale"]["bias"] = jnp.array([-1.0, 0.0, -0.5])
  a["what_encoder"]["loc"]["bias"] = jnp.array([-0.4, 0.0, 0.4])
  a["what_encoder"]["scale"]["bias"] = jnp.full((3,), 0.3)
  last = sorted(k for k in a["decoder"] if k.startswith("Dense"))[-1]
  a["decoder"][last] = {"kernel": jnp.zeros_like(a["decoder"][last]["kernel"]),
                        "bias": jnp.full_like(a["decoder"][last]["bias"], -30.0)}
  p["prop_presence"] = {"kernel": jnp.zeros_like(p["prop_presence"]["kernel"]),
                        "bias": jnp.full((1,), math.log(PI_P / (1 - PI_P)))}
  p["prior_survival"] = {"kernel": jnp.zeros_like(p["prior_survival"]["kernel"]),
                         "bias": jnp.full((1,), math.log(PSI / (1 - PSI)))}
  biases = {
      # q close to the prior keeps the weights light-tailed, so that the
      # importance-sampling check of p(x) below has a usable standard error.
      "prop_where": ([0.05, 0.1, 0.0], [-0.3, -0.5, -0.2]),
      "prop_what": ([0.1, -0.1, 0.0], [0.4, 0.0, -0.2]),
      # The prior's offset is large enough that q's two anchors ("previous"
      # and "prior") give exact ELBOs the check below tells apart.
      "prior_where": ([0.0, 0.3, -0.3], [-0.2, -0.7, 0.0]),
      "prior_what": ([-0.1, 0.0, 0.2], [0.5, 0.0, -0.3]),
  }
  for head, (loc, scale) in biases.items():
    for part, bias in (("loc", loc), ("scale", scale)):
      p[head][part] = {"kernel": jnp.zeros_like(p[head][part]["kernel"]),
                       "bias": jnp.array(bias)}
  return p


def _gauss_kl(mq, sq, mp, sp):
  mq, sq, mp, sp = (np.asarray(v, np.float64) for v in (mq, sq, mp, sp))
  return np.sum(np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2)
                - 0.5)


def _head(p, name):
  return np.asarray(p[name]["loc"]["bias"]), _softplus(p[name]["scale"]["bias"])


def _exact_elbo(p, image_seq, drop_survival_prior=False,
                glimpse_at="previous", psi=PSI, pi_p=PI_P):
  """The exact sequence ELBO, by a sum over every discrete history."""
  a, n_max = TINY_AIR, TINY.num_slots
  where_prior = (np.array([a.scale_prior_mean, 0, 0]),
                 np.array([a.scale_prior_std, a.shift_prior_std,
                           a.shift_prior_std]))
  disc_where = _head(p["air"], "where_head")
  kl_disc = (_gauss_kl(disc_where[0] + where_prior[0], disc_where[1],
                       *where_prior) +
             _gauss_kl(*_head(p["air"], "what_encoder"), np.zeros(3),
                       np.ones(3)))
  # q's z_where is an offset from the previous location ("previous") or from
  # the prior's prediction ("prior"); the prior's mean is the previous
  # location plus its own offset.
  prop_where_loc, prop_where_scale = _head(p, "prop_where")
  prior_where_loc, prior_where_scale = _head(p, "prior_where")
  if glimpse_at == "prior":
    prop_where_loc = prop_where_loc + prior_where_loc
  kl_prop = (_gauss_kl(prop_where_loc, prop_where_scale, prior_where_loc,
                       prior_where_scale) +
             _gauss_kl(*_head(p, "prop_what"), *_head(p, "prior_what")))
  pmf = lambda r, n, top: r ** n * ((1 - r) if n < top else 1.0)
  bern = lambda r, b: r if b else 1 - r
  std = a.likelihood_std
  total, m_dist = 0.0, {0: 1.0}
  for t in range(FRAMES):
    image = np.asarray(image_seq[t], np.float64)
    log_lik = np.sum(-0.5 * (image / std) ** 2 - np.log(std) -
                     0.5 * np.log(2 * np.pi))
    new_dist = {}
    for m, p_m in m_dist.items():
      for bits in itertools.product([0, 1], repeat=m):
        q_bits = np.prod([bern(pi_p, b) for b in bits])
        prior = 0.0 if drop_survival_prior else sum(
            np.log(bern(psi, b)) for b in bits)
        term_bits = prior - sum(np.log(bern(pi_p, b)) + b * kl_prop
                                for b in bits)
        k = sum(bits)
        for n in range(n_max - k + 1):
          q_n = pmf(PI_D, n, n_max - k)
          weight = p_m * q_bits * q_n
          total += weight * (term_bits + np.log(pmf(RHO, n, n_max - k)) -
                             np.log(q_n) - n * kl_disc + log_lik)
          new_dist[k + n] = new_dist.get(k + n, 0.0) + weight
    m_dist = new_dist
  return total


@pytest.fixture(scope="module", params=["previous", "prior",
                                        "prior+velocity"])
def enumerable(request):
  # In this model the likelihood does not depend on the latents, so the
  # velocity (a function of the sampled past) leaves the exact ELBO of the
  # "prior" anchor as it is: the check shows that the bound stays valid.
  glimpse_at = request.param.split("+")[0]
  config = dataclasses.replace(TINY, propagation_glimpse=glimpse_at,
                               constant_velocity="+velocity" in request.param)
  p = _enumerable_params(jax.random.key(0), config)
  image_seq = jax.random.uniform(jax.random.key(7), (FRAMES, 16, 16))
  images = jnp.broadcast_to(image_seq, (NUM_MC,) + image_seq.shape)
  out = jax.jit(lambda p, x, k: apdr.log_weight_terms(config, p, x, k, RHO))(
      p, images, jax.random.key(8))
  return p, image_seq, out, glimpse_at


def test_per_frame_log_weights_sum_to_the_exact_sequence_elbo(enumerable):
  p, image_seq, out, glimpse_at = enumerable
  exact_elbo = _exact_elbo(p, image_seq, glimpse_at=glimpse_at)
  log_weight = np.asarray(out.terms.sum(-1), np.float64)
  stderr = log_weight.std() / np.sqrt(NUM_MC)
  assert abs(log_weight.mean() - exact_elbo) < 4 * stderr + 1e-3
  # The likelihood is constant, so log p(x_{1:T}) = T C exactly, and
  # mean(exp(w)) estimates it without bias.
  exact_log_px = float(out.log_likelihood[0])
  ratios = np.exp(log_weight - exact_log_px)
  assert abs(ratios.mean() - 1.0) < 4 * ratios.std() / np.sqrt(NUM_MC)
  iwae_10 = objectives.iwae_bound(log_weight.reshape(10, -1)).mean()
  assert exact_elbo < iwae_10 < exact_log_px + 1e-2
  assert exact_log_px - exact_elbo > 0.5  # not vacuous


def test_enumeration_detects_a_missing_survival_prior(enumerable):
  """The same check fails for a model whose survival prior is dropped."""
  p, image_seq, out, glimpse_at = enumerable
  wrong = _exact_elbo(p, image_seq, drop_survival_prior=True,
                      glimpse_at=glimpse_at)
  log_weight = np.asarray(out.terms.sum(-1), np.float64)
  stderr = log_weight.std() / np.sqrt(NUM_MC)
  assert abs(log_weight.mean() - wrong) > 4 * stderr


def test_enumeration_tells_the_two_propagation_glimpses_apart(enumerable):
  """The exact ELBO of the other `propagation_glimpse` (q's z_where offset
  from the other anchor) is rejected by the same check."""
  p, image_seq, out, glimpse_at = enumerable
  other = "previous" if glimpse_at == "prior" else "prior"
  wrong = _exact_elbo(p, image_seq, glimpse_at=other)
  log_weight = np.asarray(out.terms.sum(-1), np.float64)
  stderr = log_weight.std() / np.sqrt(NUM_MC)
  assert abs(log_weight.mean() - wrong) > 4 * stderr


@pytest.mark.parametrize("in_q", [False, True])
def test_enumeration_with_the_ink_survival_factor(in_q):
  """With `survival_ink` the decoder's near-zero drawings put every prior
  survival probability at PSI times the floor 1e-3 (and q's at PI_P times
  it with `survival_ink_q`): the log-weights match that model's exact ELBO,
  and not the ELBO without the factor where it applies."""
  config = dataclasses.replace(TINY, survival_ink=1.0, survival_ink_q=in_q)
  p = _enumerable_params(jax.random.key(0), config)
  image_seq = jax.random.uniform(jax.random.key(7), (FRAMES, 16, 16))
  images = jnp.broadcast_to(image_seq, (NUM_MC,) + image_seq.shape)
  out = jax.jit(lambda p, x, k: apdr.log_weight_terms(config, p, x, k, RHO))(
      p, images, jax.random.key(8))
  log_weight = np.asarray(out.terms.sum(-1), np.float64)
  stderr = log_weight.std() / np.sqrt(NUM_MC)
  exact = _exact_elbo(p, image_seq, psi=PSI * 1e-3,
                      pi_p=PI_P * (1e-3 if in_q else 1.0))
  assert abs(log_weight.mean() - exact) < 4 * stderr + 1e-3
  # The model without the factor (in q, the one with the prior's alone).
  wrong = (_exact_elbo(p, image_seq, psi=PSI * 1e-3) if in_q else
           _exact_elbo(p, image_seq))
  assert abs(log_weight.mean() - wrong) > 4 * stderr


def test_credit_order_within_a_frame(enumerable):
  """Propagation columns, then discovery, then the likelihood; a decision's
  log q sits in its own column and the likelihood column has none."""
  _, _, out, _ = enumerable
  per_frame = out.score_log_q.reshape(NUM_MC, FRAMES, -1)
  np.testing.assert_array_equal(per_frame[..., -1], 0.0)
  # Frame 0 has nothing to propagate.
  np.testing.assert_array_equal(per_frame[:, 0, :TINY.num_slots], 0.0)
  # Discovery at frame 0 always decides its first slot.
  assert np.all(np.asarray(per_frame[:, 0, TINY.num_slots]) < 0)


def test_predict_rolls_the_prior_forward(params):
  p = _set_presence(params, survival_logit=30.0, discovery_logit=30.0)
  p["prior_survival"]["bias"] = jnp.full((1,), 30.0)
  out = jax.jit(lambda p, x, k: apdr.predict(TINY, p, x, 3, k, 1e-5))(
      p, _sequences(2, 2), jax.random.key(9))
  chex.assert_shape(out["canvas"], (2, 3, 16, 16))
  # Both objects survive under the prior and keep their ids.
  np.testing.assert_array_equal(out["ids"], np.broadcast_to([0, 1], (2, 3, 2)))


def test_reconstructions_and_predictions_are_the_likelihood_mean(params):
  """The canvases handed to users (reconstructions, predicted frames) are the
  mean that the likelihood scores: under `canvas='clip'` min(sum, 1), so a
  frame's log-likelihood is N(x | canvas) again; under 'sum' the sum."""
  p = _set_presence(params, survival_logit=30.0, discovery_logit=30.0)
  p["prior_survival"]["bias"] = jnp.full((1,), 30.0)
  last = sorted(k for k in p["air"]["decoder"] if k.startswith("Dense"))[-1]
  p["air"]["decoder"][last]["bias"] = jnp.full_like(
      p["air"]["decoder"][last]["bias"], 10.0)  # all-ones glimpses
  images = _sequences(2, 3)
  clipped = dataclasses.replace(
      TINY, air=dataclasses.replace(TINY_AIR, canvas="clip"))
  for config in (TINY, clipped):
    out = apdr.log_weight_terms(config, p, images, jax.random.key(4), 0.5,
                                with_canvas=True)
    canvas = np.asarray(out.frames.canvas)
    predicted = np.asarray(apdr.predict(config, p, images[:, :2], 2,
                                        jax.random.key(5), 0.5)["canvas"])
    if config is TINY:
      assert canvas.max() > 1.5 and predicted.max() > 1.5  # glimpses overlap
    else:
      assert canvas.max() <= 1.0 and predicted.max() <= 1.0
    std = config.air.likelihood_std
    log_lik = (-0.5 * ((np.asarray(images) - canvas) / std) ** 2 -
               math.log(std * math.sqrt(2 * math.pi))).sum((-2, -1))
    np.testing.assert_allclose(log_lik.sum(1), out.log_likelihood, rtol=1e-5)


# --- Ink tracking (mean shift of q's anchor) ---------------------------------
INK_AIR = air.AIRConfig(canvas_size=32, num_slots=3, glimpse_size=10,
                        z_what_dim=3, lstm_size=12, mlp_size=10, context_dim=8)
INK = apdr.APDRConfig(air=INK_AIR, hidden_size=10, relation_size=8,
                      ink_tracking_steps=2, ink_fit_steps=2)


def _l_shaped_decoder(params):
  """The decoder draws the same off-centre 'L' for every z_what, so that the
  template's centroid is not its box centre."""
  pattern = np.full((10, 10), 1e-3)
  pattern[1:8, 1:3] = 0.999  # the upright stroke, left of centre
  pattern[6:8, 1:7] = 0.999  # the foot, below centre
  params = jax.tree.map(lambda x: x, params)
  last = sorted(k for k in params["air"]["decoder"] if k.startswith("Dense"))[-1]
  dense = params["air"]["decoder"][last]
  params["air"]["decoder"][last] = {
      "kernel": jnp.zeros_like(dense["kernel"]),
      "bias": jnp.asarray(np.log(pattern / (1 - pattern)).reshape(-1),
                          jnp.float32)}
  return params, jnp.asarray(pattern, jnp.float32)


def _objects(config, params, z_where, presence):
  carry = apdr.initial_carry(config, params, z_where.shape[0])
  return carry.objects._replace(z_where=z_where, presence=presence)


def test_ink_centroid_against_a_direct_computation():
  patch = np.zeros((4, 2), np.float32)
  patch[0, 1] = 1.0  # pixel centres are +-0.25, +-0.75 in y, +-0.5 in x
  patch[2, 1] = 3.0
  patch[3, 0] = 2.0
  points = [(0.5, -0.75, 1.0), (0.5, 0.25, 3.0), (-0.5, 0.75, 2.0)]
  mass = sum(w for _, _, w in points)
  mean_x = sum(x * w for x, _, w in points) / mass
  mean_y = sum(y * w for _, y, w in points) / mass
  centre, got_mass = ink.ink_centroid(jnp.asarray(patch))
  np.testing.assert_allclose(centre, [mean_x, mean_y], atol=1e-6)
  np.testing.assert_allclose(got_mass, mass, rtol=1e-6)
  empty_centre, _ = ink.ink_centroid(jnp.zeros((4, 4)))
  np.testing.assert_array_equal(empty_centre, [0.0, 0.0])


def test_ink_anchor_moves_each_anchor_onto_its_own_digit():
  """Two digits drawn where they moved to (2.4-3.8 px from their anchors) and
  a third slot absent, the second digit also larger than its anchor's box:
  mean shift and the least-squares fit find both, position and scale, with
  each window's view of the other digit taken out, and leave the absent
  slot's anchor as it was."""
  params, template = _l_shaped_decoder(apdr.init_params(INK, jax.random.key(0)))
  anchor = jnp.array([[[2.5, -0.35, -0.3], [2.5, 0.3, 0.3], [2.5, 0.0, 0.0]]])
  true_where = anchor + jnp.array([[[0.0, 0.2, -0.15], [0.0, -0.12, 0.2],
                                    [0.0, 0.0, 0.0]]])
  true_where = true_where.at[0, 1, 0].set(2.3)  # the second digit grew 9%
  presence = jnp.array([[1.0, 1.0, 0.0]])
  image = glimpse.render_sum(jnp.broadcast_to(template, (1, 3, 10, 10)),
                             true_where, presence, 32, 32)
  objects = _objects(INK, params, anchor, presence)
  moved = ink.ink_anchor(INK, params, image, objects, anchor)
  np.testing.assert_allclose(moved[0, :2, 1:], true_where[0, :2, 1:],
                             atol=0.01)
  np.testing.assert_allclose(moved[0, :2, 0], true_where[0, :2, 0], atol=0.03)
  np.testing.assert_array_equal(moved[0, 2], anchor[0, 2])
  # Off: the anchor is returned as it is.
  off = dataclasses.replace(INK, ink_tracking_steps=0, ink_fit_steps=0)
  np.testing.assert_array_equal(
      ink.ink_anchor(off, params, image, objects, anchor), anchor)


def test_clipped_canvas_fit_leaves_overlapping_digits_where_they_are():
  """Two digits drawn over each other, composed as the data compose them
  (clip of the sum), with each anchor already on its digit. Under the summed
  canvas, each object's own ink loses the shared strokes and the fit moves
  the objects; under `canvas='clip'` the fit's error is zero and they stay."""
  fit_only = dict(ink_tracking_steps=0, ink_fit_steps=2)
  summed = dataclasses.replace(INK, **fit_only)
  clipped = dataclasses.replace(
      summed, air=dataclasses.replace(INK_AIR, canvas="clip"))
  params, template = _l_shaped_decoder(apdr.init_params(INK, jax.random.key(0)))
  where = jnp.array([[[2.5, -0.04, 0.0], [2.5, 0.04, 0.06], [2.5, 0.0, 0.0]]])
  presence = jnp.array([[1.0, 1.0, 0.0]])
  drawn = glimpse.render_sum(jnp.broadcast_to(template, (1, 3, 10, 10)),
                             where, presence, 32, 32)
  assert float(drawn.max()) > 1.5  # the strokes overlap
  image = jnp.minimum(drawn, 1.0)
  objects = _objects(INK, params, where, presence)
  stay = ink.ink_anchor(clipped, params, image, objects, where)
  np.testing.assert_allclose(stay, where, atol=1e-4)
  pushed = ink.ink_anchor(summed, params, image, objects, where)
  assert float(jnp.abs(pushed - where)[0, :2].max()) > 0.01


def _ink_scene(canvas, seed, scales):
  """Random digits-like blobs drawn near random anchors on a `canvas`."""
  rng = np.random.default_rng(seed)
  n = len(scales)
  where = np.stack([np.asarray(scales), rng.uniform(-0.6, 0.6, n),
                    rng.uniform(-0.6, 0.6, n)], -1)[None].astype(np.float32)
  moved = where + np.concatenate([np.zeros((1, n, 1)), rng.uniform(
      -0.08, 0.08, (1, n, 2))], -1).astype(np.float32)
  template = jnp.asarray(rng.uniform(0, 1, (1, n, 10, 10)), jnp.float32)
  presence = jnp.array([[1.0] * (n - 1) + [0.0]])
  image = jnp.minimum(glimpse.render_sum(template, jnp.asarray(moved),
                                         presence, canvas, canvas), 1.0)
  return jnp.asarray(where), presence, image


@pytest.mark.parametrize("canvas_kind", ["clip", "sum"])
@pytest.mark.parametrize("scales,crop_used", [((2.5, 2.6, 2.5), True),
                                              ((2.5, 1.0, 2.5), False)])
def test_ink_anchor_crop_equals_the_whole_canvas(canvas_kind, scales,
                                                 crop_used):
  """Each step on crops around the objects gives the whole canvas's anchors;
  an object too large for its crop sends the step to the whole canvas."""
  config = dataclasses.replace(INK, air=dataclasses.replace(
      INK_AIR, canvas_size=48, canvas=canvas_kind))
  params, _ = _l_shaped_decoder(apdr.init_params(config, jax.random.key(0)))
  where, presence, image = _ink_scene(48, 0, scales)
  objects = _objects(config, params, where, presence)
  size = ink.crop_size(config)
  assert 0 < size < 48
  frame, fits = ink._crop_frame(image, where, config.ink_window, size)
  assert bool(fits) == crop_used
  chex.assert_shape(frame.image, (1, 3, size, size))
  run = jax.jit(lambda crop: ink.ink_anchor(config, params, image, objects,
                                            where, crop=crop),
                static_argnums=0)
  whole, cropped = run(0), run(size)
  assert float(jnp.abs(whole - where).max()) > 0.01  # the anchors moved
  np.testing.assert_allclose(cropped, whole, rtol=1e-5, atol=1e-5)


def test_render_at_is_a_window_of_render():
  rng = np.random.default_rng(1)
  glimpses = jnp.asarray(rng.uniform(size=(2, 6, 6)), jnp.float32)
  z_where = jnp.array([[2.0, 0.1, -0.2], [3.0, -0.3, 0.25]])
  full = glimpse.render(glimpses, z_where, 20, 24)
  rows = jnp.stack([glimpse.pixel_centres(20)[3:11],
                    glimpse.pixel_centres(20)[9:17]])
  cols = jnp.stack([glimpse.pixel_centres(24)[0:8],
                    glimpse.pixel_centres(24)[12:20]])
  window = glimpse.render_at(glimpses, z_where, rows, cols)
  np.testing.assert_allclose(window[0], full[0, 3:11, 0:8], atol=1e-6)
  np.testing.assert_allclose(window[1], full[1, 9:17, 12:20], atol=1e-6)


def test_ink_anchor_stays_put_without_ink_and_is_differentiable():
  params, _ = _l_shaped_decoder(apdr.init_params(INK, jax.random.key(0)))
  anchor = jnp.array([[[2.5, -0.35, -0.3], [2.5, 0.3, 0.3], [2.5, 0.0, 0.0]]])
  presence = jnp.array([[1.0, 0.0, 0.0]])
  objects = _objects(INK, params, anchor, presence)
  moved = ink.ink_anchor(INK, params, jnp.zeros((1, 32, 32)), objects, anchor)
  np.testing.assert_array_equal(moved, anchor)
  image = jnp.zeros((1, 32, 32)).at[0, 8:14, 9:12].set(1.0)
  grad = jax.grad(lambda w: ink.ink_anchor(
      INK, params, image, objects._replace(z_where=w), w)[0, 0, 1:].sum())(
          anchor)
  chex.assert_tree_all_finite(grad)


def test_propagation_follows_a_moved_digit_with_ink_tracking():
  """q's mode, with zero learned offsets, lands on the digit where it moved
  to with ink tracking, and stays at the prior's prediction without it."""
  config = dataclasses.replace(INK, propagation_glimpse="prior")
  params, template = _l_shaped_decoder(_hand_wired_params(config))
  where = jnp.array([[[2.5, -0.2, 0.1], [2.5, 0.0, 0.0], [2.5, 0.0, 0.0]]])
  moved_to = where + jnp.array([[[0.0, 0.1, 0.05], [0.0] * 3, [0.0] * 3]])
  presence = jnp.array([[1.0, 0.0, 0.0]])
  image = glimpse.render_sum(jnp.broadcast_to(template, (1, 3, 10, 10)),
                             moved_to, presence, 32, 32)
  carry = apdr.initial_carry(config, params, 1)
  carry = carry._replace(objects=carry.objects._replace(
      z_where=where, presence=presence,
      ids=jnp.array([[0, -1, -1]], jnp.int32)))
  for steps, expected in ((2, moved_to), (0, where)):
    c = dataclasses.replace(config, ink_tracking_steps=steps,
                            ink_fit_steps=steps)
    prop = apdr.propagate(c, params, image, carry, carry.temporal,
                          jax.random.key(0), deterministic=True)
    np.testing.assert_allclose(prop.z_where[0, 0], expected[0, 0], atol=0.01)


def test_ink_tracking_config_is_validated():
  with pytest.raises(ValueError, match="ink_tracking_steps"):
    dataclasses.replace(INK, ink_tracking_steps=-1)
  with pytest.raises(ValueError, match="ink_window"):
    dataclasses.replace(INK, ink_window=0.8)


def test_residual_gain_hides_a_faint_drawing_of_a_tracked_digit():
  """The decoder draws 0.5 where the data has 1: with gain 1 the residual
  keeps a faint copy of the propagated digit and discovery finds it again;
  with gain 2 it is hidden and the digit is one object. (From frame 2 on,
  both of TINY's two slots are taken, so nothing more can be found.)"""
  for gain, found in ((1.0, [1, 1, 0]), (2.0, [1, 0, 0])):
    config = dataclasses.replace(TINY, residual_gain=gain)
    params = _hand_wired_params(config)
    params["air"]["decoder"]["Dense_1"]["bias"] = jnp.zeros_like(
        params["air"]["decoder"]["Dense_1"]["bias"])  # sigmoid(0) = 0.5
    counts, _, num_found, _ = _decompose(config, params,
                                         _centre_square([0, 1, 2], 3))
    np.testing.assert_array_equal(num_found, found)
    np.testing.assert_array_equal(counts, np.cumsum(found))


def test_zero_initialised_transitions_start_at_the_previous_latents():
  """At initialisation q's propagated modes and the prior's means are the
  anchor and the previous z_what exactly, and q's std is
  `posterior_scale_init` (the prior's `transition_scale_init`)."""
  config = dataclasses.replace(TINY, zero_init_transitions=True,
                               posterior_scale_init=0.01,
                               transition_scale_init=0.05,
                               propagation_glimpse="prior")
  params = apdr.init_params(config, jax.random.key(3))
  carry = apdr.initial_carry(config, params, 2)
  where = jnp.array([[2.5, 0.1, -0.2], [2.4, -0.3, 0.2]])[:, None].repeat(2, 1)
  what = jax.random.normal(jax.random.key(4), (2, 2, TINY_AIR.z_what_dim))
  carry = carry._replace(objects=carry.objects._replace(
      z_where=where, z_what=what, presence=jnp.ones((2, 2)),
      ids=jnp.array([[0, 1], [0, 1]], jnp.int32)))
  image = _sequences(2, 1)[:, 0]
  prop = apdr.propagate(config, params, image, carry, carry.temporal,
                        jax.random.key(0), deterministic=True)
  np.testing.assert_allclose(prop.z_where, where, atol=1e-6)
  np.testing.assert_allclose(prop.z_what, what, atol=1e-6)
  # Any features: the loc ignores them at first. No features: the scale is
  # its initial value (softplus of the bias plus the 1e-3 floor).
  hidden = jnp.ones((2, config.hidden_size))
  _, (loc, _) = apdr.networks.call(config, params, apdr.APDRNetworks.prop_heads,
                           hidden, where[:, 0])
  np.testing.assert_allclose(loc, where[:, 0], atol=1e-6)
  _, (_, scale) = apdr.networks.call(config, params, apdr.APDRNetworks.prop_heads,
                             jnp.zeros_like(hidden), where[:, 0])
  np.testing.assert_allclose(scale, 0.01 + 1e-3, rtol=1e-4)
  _, (p_loc, _), (w_loc, _) = apdr.networks.call(
      config, params, apdr.APDRNetworks.prior_heads, hidden, where[:, 0],
      what[:, 0])
  np.testing.assert_allclose(p_loc, where[:, 0], atol=1e-6)
  np.testing.assert_allclose(w_loc, what[:, 0], atol=1e-6)
  _, (_, p_scale), _ = apdr.networks.call(
      config, params, apdr.APDRNetworks.prior_heads, jnp.zeros_like(hidden),
      where[:, 0], what[:, 0])
  np.testing.assert_allclose(p_scale, 0.05 + 1e-3, rtol=1e-4)
  # Without it the corrections start random.
  random = apdr.init_params(dataclasses.replace(config,
                                                zero_init_transitions=False),
                            jax.random.key(3))
  _, (p_loc, _), _ = apdr.networks.call(config, random, apdr.APDRNetworks.prior_heads,
                                hidden, where[:, 0], what[:, 0])
  assert np.abs(np.asarray(p_loc - where[:, 0])).max() > 1e-4


@pytest.mark.parametrize("ink_gradient", [False, True])
def test_ink_anchor_gradient_is_optional(ink_gradient):
  """With zero-initialised corrections q's propagated mode is the anchor:
  its derivative by the previous location is 0 when the anchor is held
  constant, and flows through the fit with `ink_gradient`."""
  config = dataclasses.replace(INK, propagation_glimpse="prior",
                               zero_init_transitions=True,
                               ink_gradient=ink_gradient)
  params, template = _l_shaped_decoder(apdr.init_params(config,
                                                        jax.random.key(0)))
  where = jnp.array([[[2.5, -0.2, 0.1], [2.5, 0.0, 0.0], [2.5, 0.0, 0.0]]])
  presence = jnp.array([[1.0, 0.0, 0.0]])
  image = glimpse.render_sum(
      jnp.broadcast_to(template, (1, 3, 10, 10)),
      where + jnp.array([0.0, 0.1, 0.05]), presence, 32, 32)
  carry = apdr.initial_carry(config, params, 1)

  def mode_x(z_where):
    c = carry._replace(objects=carry.objects._replace(
        z_where=z_where, presence=presence,
        ids=jnp.array([[0, -1, -1]], jnp.int32)))
    return apdr.propagate(config, params, image, c, c.temporal,
                          jax.random.key(0), deterministic=True).z_where[0, 0, 1]

  grad = jax.grad(mode_x)(where)
  chex.assert_tree_all_finite(grad)
  if ink_gradient:
    assert np.abs(np.asarray(grad)).max() > 1e-3
  else:
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("propagation_input, kept", [("image", [1, 1]),
                                                      ("residual", [1, 0])])
def test_a_duplicate_sees_its_ink_explained_away(propagation_input, kept):
  """Two objects tracked on the same square: with "residual" the second
  one's glimpse shows the frame minus the first one's drawing, which is
  empty, and the hand-wired survival (ink in the glimpse) forgets it."""
  config = dataclasses.replace(TINY, propagation_input=propagation_input,
                               residual_gain=2.0)
  params = _hand_wired_params(config)
  carry = apdr.initial_carry(config, params, 1)
  centre = jnp.array([[[2.5, 0.0, 0.0], [2.5, 0.0, 0.0]]])
  carry = carry._replace(objects=carry.objects._replace(
      z_where=centre, presence=jnp.ones((1, 2)),
      ids=jnp.array([[0, 1]], jnp.int32)))
  image = _centre_square([0], 1)[:, 0]
  prop = apdr.propagate(config, params, image, carry, carry.temporal,
                        jax.random.key(0), deterministic=True)
  np.testing.assert_array_equal(prop.presence[0], kept)


def test_propagation_input_is_validated():
  with pytest.raises(ValueError, match="propagation_input"):
    dataclasses.replace(TINY, propagation_input="canvas")


def test_what_refresh_reads_the_new_glimpse_with_the_air_encoder():
  """With `what_refresh="encoder"` and zero-initialised corrections, q's
  propagated z_what is AIR's encoding of the glimpse at the object's new
  z_where, with AIR's std, whatever the previous z_what was; the prior's
  transition std starts at `what_transition_scale_init`."""
  config = dataclasses.replace(TINY, zero_init_transitions=True,
                               what_refresh="encoder",
                               what_transition_scale_init=0.7,
                               transition_scale_init=0.05)
  params = apdr.init_params(config, jax.random.key(3))
  carry = apdr.initial_carry(config, params, 2)
  where = jnp.array([[2.5, 0.1, -0.2], [2.4, -0.3, 0.2]])[:, None].repeat(2, 1)
  image = _sequences(2, 1)[:, 0]

  def mode(what, config=config):
    c = carry._replace(objects=carry.objects._replace(
        z_where=where, z_what=what, presence=jnp.ones((2, 2)),
        ids=jnp.array([[0, 1], [0, 1]], jnp.int32)))
    return apdr.propagate(config, params, image, c, c.temporal,
                          jax.random.key(0), deterministic=True)

  what = jax.random.normal(jax.random.key(4), (2, 2, TINY_AIR.z_what_dim))
  prop = mode(what)
  flat = lambda x: x.reshape(4, *x.shape[2:])
  patches = glimpse.extract(jnp.repeat(image, 2, axis=0), flat(prop.z_where),
                            TINY_AIR.glimpse_size, TINY_AIR.extract_method)
  loc, scale = air._call(TINY_AIR, params["air"], air.AIRNetworks.encode,
                         patches.reshape(4, -1))
  np.testing.assert_allclose(flat(prop.z_what), loc, atol=1e-5)
  np.testing.assert_allclose(mode(what + 1.0).z_what, prop.z_what, atol=1e-5)
  hidden = jnp.zeros((4, config.hidden_size))
  _, std = apdr.networks.call(config, params, apdr.APDRNetworks.prop_encode,
                      patches.reshape(4, -1), hidden, flat(what))
  np.testing.assert_allclose(std, scale, rtol=1e-6)
  _, _, (_, what_std) = apdr.networks.call(
      config, params, apdr.APDRNetworks.prior_heads, hidden, flat(where),
      flat(what))
  np.testing.assert_allclose(what_std, 0.7 + 1e-3, rtol=1e-4)
  # "previous" keeps the previous z_what instead.
  kept = mode(what, dataclasses.replace(config, what_refresh="previous"))
  np.testing.assert_allclose(kept.z_what, what, atol=1e-6)


def test_what_refresh_config_is_validated():
  with pytest.raises(ValueError, match="what_refresh"):
    dataclasses.replace(TINY, what_refresh="air")
  with pytest.raises(ValueError, match="what_transition_scale_init"):
    dataclasses.replace(TINY, what_transition_scale_init=-0.1)


def test_keep_forces_forgetting_whatever_q_decides(params):
  """`keep` (what `search_modes` proposes) overrides a certain survival."""
  p = _set_presence(params, survival_logit=30.0)
  carry = apdr.initial_carry(TINY, p, 1)
  carry = carry._replace(objects=carry.objects._replace(
      presence=jnp.ones((1, 2)), ids=jnp.array([[0, 1]], jnp.int32)))
  image = _sequences(1, 1)[:, 0]
  propagate = lambda keep: apdr.propagate(
      TINY, p, image, carry, carry.temporal, jax.random.key(0),
      deterministic=True, keep=keep).presence[0]
  np.testing.assert_array_equal(propagate(None), [1, 1])
  np.testing.assert_array_equal(propagate(jnp.array([[1.0, 0.0]])), [1, 0])
  np.testing.assert_array_equal(propagate(jnp.zeros((1, 2))), [0, 0])


def test_log_joint_of_an_empty_first_frame_in_closed_form(params):
  """Frame 0, discovery off: one presence decision (absent) and a blank
  canvas, so log p(x, z) = sum log N(x | 0, std^2) + log(1 - rho)."""
  p = _set_presence(params, discovery_logit=-30.0)
  image, rho = _sequences(2, 1)[:, 0], 0.3
  _, out = apdr.frame_step(TINY, p, apdr.initial_carry(TINY, p, 2), image,
                           apdr.image_gates(TINY, p, image[:, None])[:, 0],
                           jax.random.key(0), jnp.asarray(rho),
                           deterministic=True)
  std = TINY_AIR.likelihood_std
  expected = (-0.5 * (np.asarray(image) / std) ** 2 - np.log(
      std * np.sqrt(2 * np.pi))).sum((-2, -1)) + np.log(1 - rho)
  np.testing.assert_allclose(out.log_joint, expected, rtol=1e-5)


def test_search_with_an_unreachable_margin_is_q_modes(params):
  images = _sequences(2, 4)
  modes = apdr.log_weight_terms(TINY, params, images, jax.random.key(0), 0.3,
                                deterministic=True).frames
  searched = apdr.search_modes(TINY, params, images, jnp.asarray(0.3),
                               margin=1e9)
  for field in ("presence", "ids", "z_where", "log_likelihood", "terms"):
    chex.assert_trees_all_close(getattr(searched, field),
                                getattr(modes, field), rtol=1e-5, atol=1e-4)
  chex.assert_shape(apdr.search_candidates(3), (5, 3))


def test_search_forgets_an_object_q_keeps_on_an_empty_frame():
  """q is wired to keep every object, also after its square has gone; the
  model's evidence (an all-ones drawing on an empty frame) says forget."""
  config = TINY
  params = _set_presence(_hand_wired_params(config), survival_logit=30.0)
  images = _centre_square([0], 3)
  counts = lambda margin: np.asarray(apdr.search_modes(
      config, params, images, jnp.asarray(0.3), margin).presence.sum(-1))[0]
  np.testing.assert_array_equal(counts(1e9), [1, 1, 1])  # q's modes
  np.testing.assert_array_equal(counts(0.0), [1, 0, 0])
  # One batch, each row its own choice: gone and back (a new id) beside a
  # square that stays (forgetting it would lose its likelihood).
  both = jnp.concatenate([_centre_square([0, 2], 3),
                          _centre_square([0, 1, 2], 3)])
  out = apdr.search_modes(config, params, both, jnp.asarray(0.3), 0.0)
  np.testing.assert_array_equal(out.presence.sum(-1), [[1, 0, 1], [1, 1, 1]])
  np.testing.assert_array_equal(out.ids[:, :, 0], [[0, -1, 1], [0, 0, 0]])


def test_best_of_picks_the_sample_of_highest_log_weight(params):
  """`decompose(best_of=K)` against K samples drawn independently with the
  same keys: its log-weight is their maximum, its objects that sample's."""
  from apdr_jax import sequence_evaluation
  images, rho, k, rng = _sequences(3, 3), 0.3, 4, jax.random.key(5)
  best = sequence_evaluation.decompose(TINY, params, np.asarray(images),
                                       batch_size=40, rho=rho, best_of=k,
                                       rng=rng)
  # One chunk of 3 sequences (40 * 4 // K >= 3): its key is fold_in(rng, 0),
  # and its K samples are rows k * 3 + b of one pass over the tiled batch.
  folded = apdr.log_weight_terms(TINY, params, jnp.tile(images, (k, 1, 1, 1)),
                                 jax.random.fold_in(rng, 0), rho)
  samples = [jax.tree.map(lambda x, i=i: x[3 * i:3 * (i + 1)], folded)
             for i in range(k)]
  log_weights = np.stack([np.asarray(s.terms.sum(-1)) for s in samples])
  chex.assert_shape(best["log_weight"], (3,))
  np.testing.assert_allclose(best["log_weight"], log_weights.max(0),
                             rtol=1e-5, atol=1e-3)
  for row, index in enumerate(log_weights.argmax(0)):
    np.testing.assert_array_equal(best["ids"][row],
                                  samples[index].frames.ids[row])
    np.testing.assert_array_equal(best["presence"][row],
                                  samples[index].frames.presence[row])
  chex.assert_shape(best["boxes"], (3, 3, TINY.num_slots, 4))
  chex.assert_shape(best["reconstructions"], (3, 3, 16, 16))
  with pytest.raises(ValueError, match="best_of"):
    sequence_evaluation.decompose(TINY, params, np.asarray(images),
                                  search_margin=0.0, best_of=2)


def test_both_directions_keeps_the_reading_of_higher_log_weight():
  """q is wired to keep every object. A square that leaves after frame 0 is
  kept by the forward reading (all ones drawn on empty frames) but never
  seen before frame 0 by the backward one; a square that enters at frame 1
  is read right forward, and kept into the empty frame 0 backward. Each
  sequence gets the right reading, chosen by log-weight alone."""
  from apdr_jax import sequence_evaluation
  params = _set_presence(_hand_wired_params(TINY), survival_logit=30.0)
  # Samples of z_where close to the modes, so that a kept object's all-ones
  # drawing keeps hiding its square from discovery.
  for head in (params["air"]["where_head"], params["prop_where"]):
    head["scale"]["bias"] = jnp.full_like(head["scale"]["bias"], -10.0)
  sequences = np.asarray(jnp.concatenate([_centre_square([0], 3),
                                          _centre_square([1, 2], 3)]))
  kwargs = dict(rho=0.3, best_of=2, rng=jax.random.key(3))
  forward = sequence_evaluation.decompose(TINY, params, sequences, **kwargs)
  np.testing.assert_array_equal(forward["counts"], [[1, 1, 1], [0, 1, 1]])
  backward = sequence_evaluation.decompose_backward(
      TINY, params, sequences, kwargs["rho"], 2, kwargs["rng"])
  np.testing.assert_array_equal(backward["counts"], [[1, 0, 0], [1, 1, 1]])
  both = sequence_evaluation.decompose(TINY, params, sequences,
                                       both_directions=True, **kwargs)
  np.testing.assert_array_equal(both["counts"], [[1, 0, 0], [0, 1, 1]])
  np.testing.assert_array_equal(both["backward"], [True, False])
  np.testing.assert_allclose(
      both["log_weight"], np.maximum(forward["log_weight"],
                                     backward["log_weight"]))
  # Frames put back in order: the backward reading's boxes and ids too.
  np.testing.assert_array_equal(both["ids"][0], backward["ids"][0])
  np.testing.assert_array_equal(both["presence"][1], forward["presence"][1])
  chex.assert_shape(both["reconstructions"], (2, 3, 16, 16))
  np.testing.assert_allclose(both["reconstructions"][0, 0].max(), 1.0,
                             atol=1e-3)
  # The backward reading draws samples of its own: on a sequence that reads
  # the same both ways, the two readings' best samples still differ.
  palindrome = np.asarray(_centre_square([0, 1, 2], 3))
  assert not np.allclose(
      sequence_evaluation.decompose(TINY, params, palindrome,
                                    **kwargs)["log_weight"],
      sequence_evaluation.decompose_backward(
          TINY, params, palindrome, kwargs["rho"], 2,
          kwargs["rng"])["log_weight"])
  with pytest.raises(ValueError, match="log_weight"):
    sequence_evaluation.choose_direction({"counts": forward["counts"]},
                                         backward)
  for bad in (dict(best_of=0), dict(search_margin=0.0)):
    with pytest.raises(ValueError, match="both_directions|search_margin"):
      sequence_evaluation.decompose(
          TINY, params, sequences, both_directions=True,
          **{**kwargs, **bad})


# The model's networks (p) and q's, by parameter name: RWS trains each on
# its own objective, so under `detach_samples` log q must not reach p's.
_MODEL_NETWORKS = ("prior_rnn", "prior_survival", "prior_where",
                   "prior_what", "decoder")


@pytest.mark.parametrize("inputs", ["image", "residual"])
def test_rws_log_q_reaches_only_q_networks(inputs):
  """With `detach_samples`, grad log q is zero on every parameter of the
  model (prior and decoder), also where q reads the model's drawings (the
  residual inputs) or its predictions (the prior's anchor), and nonzero on
  q's; without it, log q does reach the model through those inputs."""
  config = dataclasses.replace(TINY, propagation_input=inputs,
                               discovery_input=inputs,
                               propagation_glimpse="prior")
  params = apdr.init_params(config, jax.random.key(0))
  # Discovery finds objects in frame 0, so that later frames propagate them.
  params["air"]["presence_head"]["bias"] = jnp.full_like(
      params["air"]["presence_head"]["bias"], 5.0)
  images = _sequences(2, 3)

  def log_q(p, detach):
    return apdr.log_weight_terms(config, p, images, jax.random.key(3),
                                 jnp.asarray(0.5),
                                 detach_samples=detach).log_q.sum()

  def by_part(grads):
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    size = lambda leaves: sum(float(jnp.abs(g).sum()) for g in leaves)
    model = [g for path, g in flat if any(
        getattr(k, "key", None) in _MODEL_NETWORKS for k in path)]
    q = [g for path, g in flat if not any(
        getattr(k, "key", None) in _MODEL_NETWORKS for k in path)]
    return size(model), size(q)

  model, q = by_part(jax.grad(log_q)(params, True))
  assert model == 0.0 and q > 0.0
  model, _ = by_part(jax.grad(log_q)(params, False))
  assert model > 0.0  # the samples and q's inputs carry the model's gradient
