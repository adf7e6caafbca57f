"""Convolutional glimpse encoder and decoder (`model.glimpse_net='conv'`).

AIR's object networks are MLPs on the `g x g` glimpse (notes §3). On textured
backgrounds a glimpse holds texture as well as the object, and local,
weight-shared filters are the usual way to tell strokes from texture; these
are drop-in replacements with the MLPs' inputs, outputs and initial biases.
"""

import flax.linen as nn

from apdr_jax import networks

_CHANNELS = (16, 32)


class ConvEncoder(nn.Module):
  """`[batch, g*g] -> (loc, scale)` of `z_what`, `[batch, D]` each: two
  stride-2 3x3 convolutions, then `networks.GaussianHead` with one hidden
  layer."""
  z_what_dim: int
  glimpse_size: int
  hidden_size: int

  @nn.compact
  def __call__(self, glimpses_flat):
    g = self.glimpse_size
    x = glimpses_flat.reshape(glimpses_flat.shape[0], g, g, 1)
    for channels in _CHANNELS:
      x = nn.relu(nn.Conv(channels, (3, 3), strides=(2, 2))(x))
    return networks.GaussianHead(
        self.z_what_dim, hidden_sizes=(self.hidden_size,),
        scale_bias=0.0)(x.reshape(x.shape[0], -1))


class ConvDecoder(nn.Module):
  """`[..., D] -> [..., g*g]` logits: a hidden layer, a `ceil(g/4)` square of
  32 channels, two stride-2 4x4 up-convolutions, cropped to `g x g`."""
  glimpse_size: int
  hidden_size: int
  output_bias_init: float = 0.0

  @nn.compact
  def __call__(self, z_what):
    g = self.glimpse_size
    side = -(-g // 4)
    lead = z_what.shape[:-1]
    x = nn.relu(nn.Dense(self.hidden_size)(z_what.reshape(-1,
                                                           z_what.shape[-1])))
    x = nn.relu(nn.Dense(side * side * _CHANNELS[1])(x))
    x = x.reshape(-1, side, side, _CHANNELS[1])
    x = nn.relu(nn.ConvTranspose(_CHANNELS[0], (4, 4), strides=(2, 2))(x))
    x = nn.ConvTranspose(1, (4, 4), strides=(2, 2), bias_init=(
        nn.initializers.constant(self.output_bias_init)))(x)
    return x[:, :g, :g, 0].reshape(lead + (g * g,))
