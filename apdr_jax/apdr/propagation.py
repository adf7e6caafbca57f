"""Propagation (notes eq. 24-26): each previous object, in turn, survives or
is forgotten and gets new latents from a glimpse at its (ink-fitted) anchor;
scored under the prior's transition."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from apdr_jax import air
from apdr_jax import distributions as dist
from apdr_jax import glimpse
from apdr_jax import ink
from apdr_jax import networks
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.networks import APDRNetworks
from apdr_jax.apdr.networks import call
from apdr_jax.apdr.state import Carry
from apdr_jax.apdr.state import Objects
from apdr_jax.apdr.state import Propagated


def _prior(config: APDRConfig, params, prev: Objects):
  """The prior's step for every object at once (eq. 16), then its heads.

  Returns:
    `(prior_state, survival [batch, N], (loc, scale) of z_where, (loc, scale)
    of z_what)`.
  """
  net = functools.partial(call, config, params)
  prior_state = net(APDRNetworks.prior_step, prev.z_where, prev.z_what,
                    prev.prior_state)
  return (prior_state,) + net(APDRNetworks.prior_heads, prior_state.hidden,
                              prior_where_offset(config, prev), prev.z_what)


# The survival factor of an object that drew nothing: keeping it costs
# -log(1e-3) = 6.9 nats a frame, and log p stays finite.
_INK_FLOOR = 1e-3


def drawn_ink(config: APDRConfig, params, objects: Objects) -> jax.Array:
  """`[batch, N]`: the ink each object draws on the canvas, the sum of its
  own rendering (what falls beyond the canvas's edges is lost), whether or
  not it is present."""
  batch, n = objects.presence.shape
  drawn = _draw(config, params, objects.z_what.reshape(batch * n, -1),
                objects.z_where.reshape(batch * n, 3), jnp.ones(batch * n))
  return drawn.sum((-2, -1)).reshape(batch, n)


def ink_visibility(config: APDRConfig, params, objects: Objects):
  """The factor on each object's prior survival probability, `[batch, N]`
  (`APDRConfig.survival_ink`; 1 when it is off)."""
  if not config.survival_ink:
    return jnp.ones_like(objects.presence)
  with jax.named_scope("survival_ink"):
    ink = drawn_ink(config, params, objects)
    return jnp.clip(ink / config.survival_ink, _INK_FLOOR, 1.0)


def _anchor(config: APDRConfig, params, image: jax.Array, prev: Objects,
            prior_where_loc: jax.Array) -> jax.Array:
  """Where q looks for each object, `[batch, N, 3]`; its z_where is an offset
  from there.

  The prior's prediction knows the object's velocity, so the glimpse is
  centred on the object even when it moves by more than the glimpse can
  tolerate; q may depend on any function of the past, so the bound holds.
  """
  anchor = (prior_where_loc if config.propagation_glimpse == "prior"
            else prev.z_where)
  if not (config.ink_tracking_steps or config.ink_fit_steps):
    return anchor
  with jax.named_scope("ink_anchor"):
    anchor = ink.ink_anchor(config, params, image, prev, anchor)
  if not config.ink_gradient:
    # The anchor's value is exact, so the bound is; its gradient is left
    # out. A converged fit depends on the frame, not on where it started,
    # so its derivative by the previous latents is near 0; differentiating
    # through the fit made a training step 2.7 times slower (measured).
    anchor = jax.lax.stop_gradient(anchor)
  # Saved, not recomputed, under `log_weight_terms(remat=True)`: the fit is
  # a quarter of a frame's forward pass and its output is 3 numbers.
  return checkpoint_name(anchor, "ink_anchor")


class _ObjectInputs(NamedTuple):
  """One previous object's inputs to the scan, `[batch, ...]` each."""
  features: jax.Array  # its glimpse's features, or `[batch, 0]` (residual)
  anchor: jax.Array
  z_what: jax.Array
  prior_hidden: jax.Array
  visibility: jax.Array  # the survival factor of `survival_ink_q`, or 1
  active: jax.Array
  keep: jax.Array
  rng: jax.Array


def _propagate_object(config: APDRConfig, params, image: jax.Array,
                      temporal: networks.LSTMState, deterministic: bool,
                      min_survival: jax.Array | float, detach_samples: bool,
                      scan_carry, inputs: _ObjectInputs):
  """q's step for one previous object: survival, then new latents.

  `scan_carry` is the relation RNN's state and the canvas the objects before
  this one drew (used with `propagation_input="residual"`).
  """
  a = config.air
  net = functools.partial(call, config, params)
  explain_away = config.propagation_input == "residual"
  batch = image.shape[0]
  relation, canvas = scan_carry
  feat, where_anchor, what_prev = inputs.features, inputs.anchor, inputs.z_what
  active = inputs.active
  where_key, what_key, presence_key = jax.random.split(inputs.rng, 3)
  # With "residual", object i looks at the frame minus what objects < i
  # drew (as discovery does), so a duplicate of an earlier object sees
  # the ink already explained away.
  # Under RWS q's inputs drawn by the model's decoder are constants to q.
  drawn = jax.lax.stop_gradient(canvas) if detach_samples else canvas
  seen = (residual(image, drawn, config.residual_gain) if explain_away
          else image)
  if explain_away:
    feat = net(APDRNetworks.glimpse_features, glimpse.extract(
        seen, where_anchor, a.glimpse_size, a.extract_method).reshape(
            batch, -1))
  hidden = net(APDRNetworks.prop_hidden, feat, where_anchor, what_prev,
               temporal.hidden, relation.hidden, inputs.prior_hidden)
  raw_prob, (where_loc, where_scale) = net(APDRNetworks.prop_heads, hidden,
                                           where_anchor)
  raw_prob = raw_prob * inputs.visibility
  prob = jnp.maximum(raw_prob, min_survival)
  presence, z_where = air.sample_presence_and_where(
      presence_key, where_key, prob, where_loc, where_scale, active,
      deterministic)
  presence = presence * inputs.keep
  z_where = jax.lax.stop_gradient(z_where) if detach_samples else z_where
  patch = glimpse.extract(seen, z_where, a.glimpse_size, a.extract_method)
  what_loc, what_scale = net(APDRNetworks.prop_encode,
                             patch.reshape(batch, -1), hidden, what_prev)
  z_what, log_q_z = air.sample_what(
      what_key, (what_loc, what_scale), z_where, (where_loc, where_scale),
      presence, deterministic, detach_samples)
  log_q_presence = active * dist.bernoulli_log_prob(presence, prob)
  new_relation = net(APDRNetworks.relation_step, z_where, z_what, presence,
                     relation)
  # Only objects that existed in the previous frame move the relation RNN.
  relation = jax.tree.map(
      lambda new, old: jnp.where(active[:, None] > 0, new, old),
      new_relation, relation)
  baseline = net(APDRNetworks.prop_baseline_value, hidden)
  if explain_away:
    canvas = canvas + _draw(config, params, z_what, z_where, presence)
  return (relation, canvas), (z_where, z_what, presence, log_q_presence,
                              log_q_z, baseline, raw_prob)


def _draw(config: APDRConfig, params, z_what: jax.Array, z_where: jax.Array,
          presence: jax.Array) -> jax.Array:
  """One object per row, drawn on the canvas: `[batch, H, W]`."""
  a = config.air
  decoded = air.decode(a, params["air"], z_what)
  if a.render_method == "separable":
    # One slot of `render_sum`: the same drawing, with its written-out
    # backward (autodiff's transposed-operand matmuls are slow on CPU).
    return glimpse.render_sum(decoded[:, None], z_where[:, None],
                              presence[:, None], a.canvas_size, a.canvas_size)
  return presence[:, None, None] * glimpse.render(
      decoded, z_where, a.canvas_size, a.canvas_size, a.render_method)


def propagate(config: APDRConfig, params, image: jax.Array, carry: Carry,
              temporal: networks.LSTMState, rng: jax.Array,
              deterministic: bool = False,
              min_survival: jax.Array | float = 0.0,
              keep: jax.Array | None = None,
              detach_samples: bool = False) -> Propagated:
  """Samples q^P(z^P_t, k_t | x_t, z_{t-1}, h^q_t) and scores it under p^P.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    image: `[batch, H, W]`, frame `t`.
    carry: the previous frame's objects.
    temporal: `h^q_t`.
    rng: a key.
    deterministic: posterior modes instead of samples.
    min_survival: a floor on q's survival probability (a training warm-up:
      near 1, objects must be tracked before they may be forgotten; q stays
      a proper distribution, so the bound stays valid).
    keep: optional `[batch, N]` in {0, 1}: objects with 0 are forgotten
      whatever q decides (`search_modes` proposes such structures; the
      decisions are then not q's samples and `log_q_presence` is not their
      probability).
    detach_samples: samples without gradient (`air.infer`; RWS).

  Returns:
    `Propagated`.
  """
  a = config.air
  prev = carry.objects
  batch, n = prev.presence.shape
  with jax.named_scope("prior"):
    prior_state, survival, (p_where_loc, p_where_scale), (
        p_what_loc, p_what_scale) = _prior(config, params, prev)
    visibility = ink_visibility(config, params, prev)
    survival = survival * visibility
  q_visibility = (visibility if config.survival_ink_q
                  else jnp.ones_like(visibility))
  anchor = _anchor(config, params, image, prev, p_where_loc)
  q_prior_hidden = prior_state.hidden
  if detach_samples:
    # RWS: what q reads from the model's networks (the prior's prediction,
    # its RNN state) is a constant to q, so that grad log q reaches q's
    # parameters only (`objectives.rws`).
    anchor = jax.lax.stop_gradient(anchor)
    q_prior_hidden = jax.lax.stop_gradient(q_prior_hidden)
    q_visibility = jax.lax.stop_gradient(q_visibility)
  explain_away = config.propagation_input == "residual"
  if explain_away:
    features = jnp.zeros((batch, n, 0))  # computed inside the scan
  else:
    # The glimpse around each anchor does not depend on the other objects:
    # extract and encode all of them before the sequential scan.
    tile = lambda x: jnp.repeat(x, n, axis=0)
    patches = glimpse.extract(tile(image), anchor.reshape(batch * n, 3),
                              a.glimpse_size, a.extract_method)
    features = call(config, params, APDRNetworks.glimpse_features,
                    patches.reshape(batch * n, -1)).reshape(batch, n, -1)
  step = functools.partial(_propagate_object, config, params, image, temporal,
                           deterministic, min_survival, detach_samples)
  swap = lambda x: jnp.swapaxes(x, 0, 1)
  relation0 = call(config, params, APDRNetworks.relation_initial, batch)
  keep = jnp.ones_like(prev.presence) if keep is None else keep
  with jax.named_scope("object_scan"):
    (relation, canvas), outputs = jax.lax.scan(
        step, (relation0, jnp.zeros_like(image)),
        _ObjectInputs(swap(features), swap(anchor), swap(prev.z_what),
                      swap(q_prior_hidden), swap(q_visibility),
                      swap(prev.presence),
                      swap(keep), jax.random.split(rng, n)), unroll=True)
  z_where, z_what, presence, log_q_presence, log_q_z, baseline, q_survival = (
      swap(x) for x in outputs)
  active = prev.presence
  log_p_presence = active * dist.bernoulli_log_prob(presence, survival)
  log_p_z = presence * (
      dist.normal_log_prob(z_where, p_where_loc, p_where_scale).sum(-1) +
      dist.normal_log_prob(z_what, p_what_loc, p_what_scale).sum(-1))
  return Propagated(z_where, z_what, presence, active, log_q_presence, log_q_z,
                    log_p_presence, log_p_z, baseline, relation, prior_state,
                    q_survival * active, survival * active,
                    canvas if explain_away else None)


def residual(image: jax.Array, drawn: jax.Array,
              gain: float = 1.0) -> jax.Array:
  """`clip(image - gain * drawn, 0, 1)`: what a drawing leaves unexplained."""
  return jnp.clip(image - gain * drawn, 0.0, 1.0)



def prior_where_offset(config: APDRConfig, objects: Objects) -> jax.Array:
  """What the prior's `z_where` mean is an offset from, `[batch, N, 3]`."""
  if config.constant_velocity:
    return objects.z_where + objects.velocity
  return objects.z_where
