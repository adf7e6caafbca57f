"""REBAR and RELAX: unbiased gradients for Bernoulli decisions, with the
Concrete relaxation as a control variate.

For bits `b ~ Bernoulli(sigmoid(logits))` and an objective `f(b)` that can
also be evaluated at relaxed bits in (0, 1), both estimators draw

    z  = logits + logit(u),        b = H(z) = [z > 0],          u ~ U(0, 1),
    z~ = logits + logit(v'),       v' uniform on the half of (0, 1) that
                                   gives the same b (z~ | b),   v ~ U(0, 1),

and estimate the gradient of `E[f(b)]` with respect to `logits` as

    [f(b) - c(z~)] d log p(b) + d c(z) - d c(z~),

where the control variate `c` is a function of the relaxed sample:
`eta * f(sigmoid(z / temperature))` for REBAR (Tucker et al., 2017), any
differentiable function for RELAX (Grathwohl et al., 2018), typically REBAR's
plus a small network. Because `E_u[c(z)] = E_b E_{z~|b}[c(z~)]`, the last
two terms cancel the first's control variate in expectation: the estimate is
unbiased for any `c`, and `c`'s own parameters (`eta`, the temperature, the
network) are trained to minimise its variance (`variance_loss`).

These work on one vector of bits whose logits do not depend on one another.
AIR's presence decisions form a chain (slot `i`'s logit depends on slot
`i - 1`'s bit), and a relaxed chain fed with relaxed bits no longer has the
discrete chain's distribution of `H(z)`: `air_control.py` gives each of
AIR's decisions its own control variate, a function of its own relaxed
sample with everything else held fixed.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


class RelaxedBits(NamedTuple):
  """A joint draw of the bits and both relaxed samples, shaped as `logits`.

  Attributes:
    bits: `b` in {0., 1.}, without gradient.
    z: the relaxed sample in logit space, reparameterised in `logits`.
    z_tilde: the relaxed sample conditioned on `bits`, reparameterised in
      `logits` with `bits` held fixed.
  """
  bits: jax.Array
  z: jax.Array
  z_tilde: jax.Array


def _logit(p: jax.Array) -> jax.Array:
  return jnp.log(p) - jnp.log1p(-p)


def noise(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """The uniforms `(u, v)` of one draw, `shape + [2]`, in (0, 1)."""
  tiny = jnp.finfo(dtype).tiny
  return jax.random.uniform(rng, tuple(shape) + (2,), dtype, tiny, 1.0)


def from_noise(logits: jax.Array, uniforms: jax.Array) -> RelaxedBits:
  """`RelaxedBits` for independent Bernoullis with these `logits`, from the
  uniforms of `noise` (`logits.shape + [2]`); differentiable in `logits`."""
  u, v = uniforms[..., 0], uniforms[..., 1]
  z = logits + _logit(u)
  bits = sg((z > 0).astype(logits.dtype))
  # b = 1 exactly when u > 1 - p: given b, u is uniform on (1 - p, 1) or on
  # (0, 1 - p). Written with sigmoids of +-logits so that neither end
  # loses precision when p is near 0 or 1.
  p, one_minus_p = jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)
  v_given_b = jnp.where(bits > 0, one_minus_p + v * p, v * one_minus_p)
  v_given_b = jnp.clip(v_given_b, jnp.finfo(logits.dtype).tiny,
                       1.0 - jnp.finfo(logits.dtype).eps)
  return RelaxedBits(bits, z, logits + _logit(v_given_b))


def sample(rng: jax.Array, logits: jax.Array) -> RelaxedBits:
  """Draws `RelaxedBits` for independent Bernoullis with these `logits`."""
  return from_noise(logits, noise(rng, logits.shape, logits.dtype))


def bernoulli_log_prob(bits: jax.Array, logits: jax.Array) -> jax.Array:
  """Elementwise `log p(bits)` under `Bernoulli(sigmoid(logits))`."""
  return bits * jax.nn.log_sigmoid(logits) + (1 - bits) * jax.nn.log_sigmoid(
      -logits)


def surrogate(objective: Callable[[jax.Array], jax.Array],
              control: Callable[[jax.Array], jax.Array],
              logits: jax.Array, draw: RelaxedBits) -> jax.Array:
  """A scalar whose gradient is the RELAX estimate (REBAR's for REBAR's
  control); its value is not the objective.

  Args:
    objective: `f`, bits `[..., n]` -> `[...]`; evaluated at `draw.bits`. Its
      own dependence on parameters (other than through the bits) is
      differentiated too (pathwise).
    control: `c`, relaxed logits `[..., n]` -> `[...]`, differentiable.
    logits: `[..., n]`, the Bernoullis' logits (with gradient).
    draw: `sample(rng, logits)`, drawn with these logits.

  Returns:
    The sum over the leading dimensions of the per-draw surrogates.
  """
  value = objective(draw.bits)
  log_prob = bernoulli_log_prob(draw.bits, logits).sum(-1)
  # The score term's weight carries no gradient to the logits, but keeps its
  # dependence on the control's own parameters: `variance_loss`
  # differentiates the estimate with respect to them.
  weight = sg(value) - control(sg(draw.z_tilde))
  return jnp.sum(value + weight * log_prob + control(draw.z)
                 - control(draw.z_tilde))


def rebar_control(objective: Callable[[jax.Array], jax.Array],
                  temperature: jax.Array, scale: jax.Array):
  """REBAR's control variate: `scale * f(sigmoid(z / temperature))`."""
  return lambda z: scale * objective(jax.nn.sigmoid(z / temperature))


def variance_loss(estimates) -> jax.Array:
  """The quantity RELAX's control parameters minimise: the mean squared norm
  of the gradient estimates (their variance plus a term that does not depend
  on the control, since the estimates' mean does not).

  Args:
    estimates: a pytree of per-draw gradient estimates, each leaf
      `[draws, ...]`.
  """
  leaves = jax.tree.leaves(estimates)
  return sum(jnp.sum(x ** 2) for x in leaves) / leaves[0].shape[0]
