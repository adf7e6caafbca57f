"""REBAR's and RELAX's control variates for AIR's presence decisions.

`rebar.py` estimates gradients for independent bits. AIR's decisions form a
chain, so each decision `i` gets its own control variate, a function of its
own relaxed sample `z_i` alone, with every other quantity held fixed (no
gradient). Such a function is a valid control variate for decision `i`'s
learning signal `L_i = sum_{j >= i} terms_j` (DESIGN §3.4): its value at the
conditional sample `z~_i` is subtracted from `L_i` in the score-function
term, and `c_i(z_i) - c_i(z~_i)` is added, whose gradient through `z_i`
and `z~_i` cancels that subtraction in expectation. The estimator stays
unbiased for any such `c_i`; a good one makes the residual small.

REBAR's `c_i(s)`, with `s = sigmoid(z / temperature)` the relaxed bit, is
`scale` times the part of `L_i` that slot `i` decides when the later slots are
left out: its presence term `s log(rho / p_i) + (1 - s) log((1 - rho) /
(1 - p_i))` and the likelihood of the canvas drawn by the slots before it
plus `s` times its own drawing. As the temperature goes to 0 it is `L_i`
exactly when slot `i` is absent or the last present one. RELAX adds a small
network of `(h_i, s)` (`AIRNetworks.relax_value`), trained to minimise the
variance of the gradient estimate with respect to the decision's logit
(`relax_variance_loss`; the logit is what every q parameter's gradient goes
through, and its variance costs no second pass through AIR).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import glimpse
from apdr_jax import objectives
from apdr_jax import rebar
from apdr_jax import relaxed

sg = jax.lax.stop_gradient


class Controls(NamedTuple):
  """Every decision's control variate at both relaxed samples, `[batch, N]`.

  Attributes:
    at_z: `c_i(z_i)`, with gradient to q through `z_i`'s logit.
    at_z_tilde: `c_i(z~_i)`, likewise.
    variance_loss: scalar; RELAX's objective for its network (gradient to
      that network only); 0 for REBAR.
  """
  at_z: jax.Array
  at_z_tilde: jax.Array
  variance_loss: jax.Array


def _fixed_parts(config: air.AIRConfig, params, images: jax.Array,
                 slots: air.Slots, rho: jax.Array, background=None):
  """What every control variate holds fixed: per slot, the log-likelihood as
  a function of its relaxed bit (over the sample's background, held fixed),
  and its presence term's two ends."""
  background = None if background is None else sg(background)
  size = config.canvas_size
  drawings = jax.vmap(lambda g, w: glimpse.render(g, w, size, size),
                      in_axes=1, out_axes=1)(
                          air.decode(config, sg(params), sg(slots.z_what)),
                          sg(slots.z_where))  # [B, N, H, W]
  present = sg(slots.presence)[..., None, None]
  # The canvas of the slots before each slot (exclusive cumulative sum).
  before = jnp.cumsum(present * drawings, 1) - present * drawings
  prob = jnp.clip(sg(slots.presence_prob), 1e-6, 1 - 1e-6)
  present_term = jnp.log(rho) - jnp.log(prob)
  absent_term = jnp.log1p(-rho) - jnp.log1p(-prob)

  def log_weight_part(s):  # s: [B, N] relaxed bits
    canvas = before + s[..., None, None] * drawings
    like = jax.vmap(lambda c: air.log_likelihood(config, images, c,
                                                 background),
                    in_axes=1, out_axes=1)(canvas)
    return sg(slots.active) * (s * present_term + (1 - s) * absent_term + like)
  return log_weight_part


def controls(config: air.AIRConfig, params, images: jax.Array,
             slots: air.Slots, rho: jax.Array, terms: jax.Array,
             temperature: float, scale: float, relax: bool,
             background: jax.Array | None = None) -> Controls:
  """REBAR's (or RELAX's) control variates for one sample per image.

  Args:
    config: the architecture (`relax_control=True` for RELAX).
    params: `AIRNetworks` parameters.
    images: `[batch, H, W]`.
    slots: sampled with `rebar_noise=True`.
    rho: the presence prior.
    terms: `[batch, N + 1]`, the sample's log-weight terms (for RELAX's
      variance objective; no gradient is taken through them).
    temperature: the relaxation's temperature.
    scale: REBAR's `eta`, the weight of the relaxed log-weight.
    relax: add the learned network and its variance objective.
    background: `[batch, H, W]`, the sample's background (None without
      one); the controls hold it fixed.

  Returns:
    `Controls`.
  """
  log_weight_part = _fixed_parts(config, params, images, slots, rho,
                                 background)
  logits = relaxed.logit(slots.presence_prob)  # gradient to q
  noise = sg(slots.presence_noise)

  def evaluate(logits, net_params):
    draw = rebar.from_noise(logits, noise)
    def control(z):
      s = jax.nn.sigmoid(z / temperature)
      value = scale * log_weight_part(s)
      if relax:
        learned = jax.vmap(
            lambda h, x: air.AIRNetworks(config).apply(
                {"params": net_params}, h, x,
                method=air.AIRNetworks.relax_value),
            in_axes=(1, 1), out_axes=1)(sg(slots.hidden), s)
        value = value + sg(slots.active) * learned
      return value
    return control(draw.z), control(draw.z_tilde), draw.bits

  at_z, at_z_tilde, _ = evaluate(logits, sg(params))
  variance = jnp.zeros(())
  if relax:
    variance = relax_variance_loss(evaluate, sg(logits), params, slots,
                                   terms)
  return Controls(at_z, at_z_tilde, variance)


def relax_variance_loss(evaluate, logits, params, slots, terms):
  """Mean over the batch of the squared per-decision logit-gradient estimates,
  as a function of the control network's parameters (only)."""
  signal = sg(objectives.reverse_cumsum(terms)[:, :-1])  # [B, N]

  def loss(net_params):
    # Decision i's controls depend on its own logit only (a diagonal
    # Jacobian), so one forward-mode pass with a tangent of ones gives the
    # values and every decision's derivative at once.
    (c_z, c_zt, bits), (d_z, d_zt, _) = jax.jvp(
        lambda l: evaluate(l, net_params), (logits,),
        (jnp.ones_like(logits),))
    score = bits - jax.nn.sigmoid(logits)  # d log q(b) / d logit
    estimate = sg(slots.active) * ((signal - c_zt) * score + d_z - d_zt)
    return jnp.mean(jnp.sum(estimate ** 2, -1))
  # Differentiated with respect to the network's parameters only: the rest
  # of `params` enters as a constant.
  net_only = jax.tree_util.tree_map_with_path(
      lambda path, x: x if "relax_baseline" in jax.tree_util.keystr(path)
      else sg(x), params)
  return loss(net_only)
