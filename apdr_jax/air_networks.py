"""AIR's architecture and networks: `AIRConfig` (the frozen architecture and
prior) and `AIRNetworks` (every network, called through `call`).

`apdr_jax.air` composes them into inference and the log-weight and
re-exports these names, so `air.AIRConfig` and `air.AIRNetworks` work as
before.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from apdr_jax import background as background_lib
from apdr_jax import glimpse_nets
from apdr_jax import networks

CANVAS_RULES = ("sum", "clip")
GLIMPSE_NETS = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class AIRConfig:
  """Architecture and prior of AIR (DESIGN §4 for the usual values)."""
  canvas_size: int = 50
  num_slots: int = 3
  glimpse_size: int = 20
  z_what_dim: int = 50
  lstm_size: int = 256
  mlp_size: int = 200
  likelihood_std: float = 0.3
  scale_prior_mean: float = 2.5
  scale_prior_std: float = 0.3
  shift_prior_std: float = 1.0
  presence_init: float = 0.1
  where_scale_init: float = 0.1
  decoder_bias: float = -2.0
  context_dim: int = 0
  extract_method: str = "gather"
  render_method: str = "separable"
  # 0: the image feeds the LSTM gates through one `[H*W, 4*lstm]` matrix (the
  # model as specified). r > 0: through a rank-r factorisation, `[H*W, r]`
  # then `[r, 4*lstm]`, for speed (docs/air_multi_mnist.md, "Speed": half
  # of a step's FLOPs are that matrix on 50x50 images).
  image_rank: int = 0
  # How the objects' drawings make the canvas that the likelihood scores:
  # "sum" (notes §8: the partial images are summed) or "clip", min(sum, 1),
  # the way the data generator composes overlapping digits
  # (`data.overlap='clip_sum'`). Under "sum", two objects drawn over the
  # same strokes predict about 2 where the data hold 1, which favours one
  # object for two overlapping digits ("A likely cause" in
  # docs/apdr_2026-12-06_particles_fivo_clip_canvas.md).
  canvas: str = "sum"
  # RELAX's learned control variate (`relax_control` network); set by
  # `run_config.model_config` for `estimator='relax'` only, so that every
  # other run keeps its parameter tree.
  relax_control: bool = False
  # Notes §7's background component (`apdr_jax/background.py`): 'none' (no
  # background, the parameters and log-weights of the model without it),
  # 'mlp' or 'conv' (its decoder); how the objects are composed over it; and
  # 0 (b = g(h^N)) or the size of its own latent with a prior.
  background: str = "none"
  background_compose: str = "over"
  background_latent_dim: int = 0
  # The side at which the background is decoded, then resized to the
  # canvas (0 = the canvas's): a coarse one cannot draw the digits.
  background_resolution: int = 0
  # A learned full-resolution image added to the background in logit space,
  # shared by every scene: a background fixed across the data in full detail.
  background_static: bool = False
  # The objects' glimpse encoder and decoder: 'mlp' (the notes) or 'conv'
  # (`glimpse_nets`, for textured data).
  glimpse_net: str = "mlp"

  def __post_init__(self):
    if self.glimpse_net not in GLIMPSE_NETS:
      raise ValueError(f"glimpse_net={self.glimpse_net!r}; use one of "
                       f"{GLIMPSE_NETS}")
    if self.canvas not in CANVAS_RULES:
      raise ValueError(f"canvas={self.canvas!r}; use one of {CANVAS_RULES}")
    background_lib.check(self.background, self.background_compose,
                         self.background_latent_dim,
                         self.background_resolution, self.canvas_size,
                         self.background_static)

  @property
  def latent_dim(self) -> int:
    """Size of one slot's latents fed back to the LSTM: where, what, presence."""
    return 3 + self.z_what_dim + 1


def _inverse_softplus(y: float) -> float:
  return math.log(math.expm1(y))


class AIRNetworks(nn.Module):
  """All of AIR's networks. Call its methods through `apply(..., method=...)`."""
  config: AIRConfig

  def setup(self):
    c = self.config
    self.rnn = networks.InferenceLSTM(c.lstm_size, image_rank=c.image_rank)
    p = c.presence_init
    self.presence_head = nn.Dense(
        1, kernel_init=nn.initializers.variance_scaling(
            0.01, "fan_in", "truncated_normal"),
        bias_init=nn.initializers.constant(math.log(p / (1.0 - p))))
    self.where_head = networks.GaussianHead(
        3, scale_bias=_inverse_softplus(c.where_scale_init))
    if c.glimpse_net == "conv":
      self.what_encoder = glimpse_nets.ConvEncoder(
          c.z_what_dim, c.glimpse_size, c.mlp_size)
      self.decoder = glimpse_nets.ConvDecoder(c.glimpse_size, c.mlp_size,
                                              c.decoder_bias)
    else:
      self.what_encoder = networks.GaussianHead(
          c.z_what_dim, hidden_sizes=(c.mlp_size,), scale_bias=0.0)
      self.decoder = networks.MLP((c.mlp_size,), c.glimpse_size ** 2,
                                  output_bias_init=c.decoder_bias)
    self.baseline = networks.MLP((c.mlp_size,), 1)
    if c.relax_control:
      # Named to end in "baseline": it shares the baseline's learning rate
      # and gradient clipping (`optimizer`).
      self.relax_baseline = networks.MLP((c.mlp_size,), 1)
    if c.background != "none":
      self.background_net = background_lib.BackgroundNet(
          c.background, c.canvas_size, c.mlp_size, c.background_latent_dim,
          c.background_resolution, c.background_static)

  def image_gates(self, images):
    """`[batch, H, W] -> [batch, 4*lstm]`, computed once per image."""
    return self.rnn.image_gates(images.reshape(images.shape[0], -1))

  def initial_state(self, batch_size):
    return self.rnn.initial_state(batch_size)

  def rnn_step(self, image_gates, latents, state):
    return self.rnn.step(image_gates, latents, state)

  def heads(self, hidden):
    """Presence probability `[batch]` and `z_where` (loc, scale) `[batch, 3]`."""
    prob = jax.nn.sigmoid(self.presence_head(hidden)[:, 0])
    offset = jnp.array([self.config.scale_prior_mean, 0.0, 0.0])
    return prob, self.where_head(hidden, offset)

  def encode(self, glimpses_flat):
    """`[batch, g*g] -> z_what (loc, scale)`, each `[batch, D]`."""
    return self.what_encoder(glimpses_flat)

  def decode(self, z_what):
    """`[..., D] -> [..., g, g]` glimpse intensities in (0, 1)."""
    g = self.config.glimpse_size
    logits = self.decoder(z_what)
    return jax.nn.sigmoid(logits).reshape(z_what.shape[:-1] + (g, g))

  def baseline_value(self, hidden):
    """NVIL's input-dependent baseline for one presence decision, `[batch]`."""
    return self.baseline(jax.lax.stop_gradient(hidden))[:, 0]

  def relax_value(self, hidden, relaxed_presence):
    """RELAX's learned part of one decision's control variate, `[batch]`,
    from the LSTM output and the decision's relaxed presence `[batch]`."""
    inputs = jnp.concatenate([jax.lax.stop_gradient(hidden),
                              relaxed_presence[:, None]], -1)
    return self.relax_baseline(inputs)[:, 0]

  def background_step(self, method, *args):
    """Calls `BackgroundNet.<method>` (see `background.infer`)."""
    return getattr(self.background_net, method)(*args)

  def __call__(self, images):
    """Touches every network once (used only by `init`)."""
    c = self.config
    batch = images.shape[0]
    state = self.initial_state(batch)
    latents = jnp.zeros((batch, c.latent_dim + c.context_dim))
    state = self.rnn_step(self.image_gates(images), latents, state)
    self.heads(state.hidden)
    if c.background != "none":
      self.background_net(state.hidden)
    self.baseline_value(state.hidden)
    if c.relax_control:
      self.relax_value(state.hidden, jnp.zeros((batch,)))
    self.encode(jnp.zeros((batch, c.glimpse_size ** 2)))
    return self.decode(jnp.zeros((batch, c.z_what_dim)))


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: AIRConfig, rng: jax.Array):
  """Initial parameters (a pytree) of `AIRNetworks(config)`.

  Jitted: one compilation instead of hundreds of eagerly dispatched ops.
  """
  images = jnp.zeros((1, config.canvas_size, config.canvas_size))
  return AIRNetworks(config).init(rng, images)["params"]


def call(config, params, method, *args):
  """`AIRNetworks(config).<method>(*args)` with `params`."""
  return AIRNetworks(config).apply({"params": params}, *args, method=method)
