"""Neural building blocks (a leaf module: JAX and Flax only).

The inference LSTM takes the image at every step. Its image contribution to the
gates, `W_x x + b`, is the same at every step and for every sample, so
`InferenceLSTM` exposes it as a separate method (`image_gates`) that callers
compute once per image and feed to every `step`.
"""

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTMState(NamedTuple):
  """Hidden and cell state, each `[batch, hidden]`."""
  hidden: jax.Array
  cell: jax.Array


class InferenceLSTM(nn.Module):
  """An LSTM whose input is split into a fixed image part and a latent part.

  With `image_rank > 0` the image reaches the gates through a linear
  bottleneck of that width (a low-rank image-to-gates matrix).
  """
  hidden_size: int
  image_rank: int = 0

  def setup(self):
    if self.image_rank:
      self.image_projection = nn.Dense(self.image_rank, use_bias=False,
                                       name="image_projection")
    self.image_dense = nn.Dense(4 * self.hidden_size, name="image")
    self.latent_dense = nn.Dense(4 * self.hidden_size, use_bias=False,
                                 name="latent")
    self.hidden_dense = nn.Dense(4 * self.hidden_size, use_bias=False,
                                 name="hidden")
    self.initial_hidden = self.param("initial_hidden", nn.initializers.zeros,
                                     (self.hidden_size,))
    self.initial_cell = self.param("initial_cell", nn.initializers.zeros,
                                   (self.hidden_size,))

  def image_gates(self, images_flat: jax.Array) -> jax.Array:
    """`[batch, H*W] -> [batch, 4*hidden]`: the image's share of the gates."""
    if self.image_rank:
      images_flat = self.image_projection(images_flat)
    return self.image_dense(images_flat)

  def initial_state(self, batch_size: int) -> LSTMState:
    """The learned initial state broadcast to `[batch, hidden]`."""
    shape = (batch_size, self.hidden_size)
    return LSTMState(jnp.broadcast_to(self.initial_hidden, shape),
                     jnp.broadcast_to(self.initial_cell, shape))

  def step(self, image_gates: jax.Array, latents: jax.Array,
           state: LSTMState) -> LSTMState:
    """One LSTM step.

    Args:
      image_gates: `[batch, 4*hidden]` from `image_gates`.
      latents: `[batch, latent_dim]`, the previous step's latents (and any
        conditioning context).
      state: the previous `LSTMState`.

    Returns:
      The new `LSTMState`.
    """
    gates = (image_gates + self.latent_dense(latents) +
             self.hidden_dense(state.hidden))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    # +1 forget bias: the usual LSTM initialisation that keeps memory early on.
    cell = jax.nn.sigmoid(f + 1.0) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return LSTMState(hidden, cell)

  def __call__(self, images_flat, latents, state):
    return self.step(self.image_gates(images_flat), latents, state)


class MLP(nn.Module):
  """ReLU hidden layers then a linear output layer."""
  hidden_sizes: Sequence[int]
  output_size: int
  output_bias_init: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    return nn.Dense(self.output_size,
                    bias_init=nn.initializers.constant(self.output_bias_init))(x)


class GaussianHead(nn.Module):
  """Maps features to the `(loc, scale)` of a diagonal Gaussian.

  `loc = offset + Dense(x)` and `scale = softplus(Dense(x) + scale_bias)`, with
  small output weights so that training starts from `(offset, softplus(scale_bias))`.
  With `zero_loc` the loc's output weights start at zero, so that `loc` starts
  at `offset` exactly (a residual that training grows).
  """
  size: int
  hidden_sizes: Sequence[int] = ()
  scale_bias: float = 0.0
  min_scale: float = 1e-3
  zero_loc: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, offset: jax.Array | float = 0.0):
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    small = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
    loc_init = nn.initializers.zeros if self.zero_loc else small
    loc = nn.Dense(self.size, kernel_init=loc_init, name="loc")(x) + offset
    raw_scale = nn.Dense(self.size, kernel_init=small,
                         bias_init=nn.initializers.constant(self.scale_bias),
                         name="scale")(x)
    return loc, jax.nn.softplus(raw_scale) + self.min_scale


class LSTM(nn.Module):
  """A plain LSTM cell with a learned initial state.

  `step(inputs, state)` works on any leading batch shape, so APDR runs one
  prior RNN per object by giving it `[batch, N, ...]` inputs.
  """
  hidden_size: int

  def setup(self):
    self.input_dense = nn.Dense(4 * self.hidden_size, name="input")
    self.hidden_dense = nn.Dense(4 * self.hidden_size, use_bias=False,
                                 name="hidden")
    self.initial_hidden = self.param("initial_hidden", nn.initializers.zeros,
                                     (self.hidden_size,))
    self.initial_cell = self.param("initial_cell", nn.initializers.zeros,
                                   (self.hidden_size,))

  def initial_state(self, batch_shape: tuple[int, ...]) -> LSTMState:
    """The learned initial state broadcast to `batch_shape + [hidden]`."""
    shape = tuple(batch_shape) + (self.hidden_size,)
    return LSTMState(jnp.broadcast_to(self.initial_hidden, shape),
                     jnp.broadcast_to(self.initial_cell, shape))

  def step(self, inputs: jax.Array, state: LSTMState) -> LSTMState:
    """`inputs [..., in]`, `state [..., hidden]` each -> the new state."""
    gates = self.input_dense(inputs) + self.hidden_dense(state.hidden)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1.0) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    return LSTMState(jax.nn.sigmoid(o) * jnp.tanh(cell), cell)
