"""The background component of notes §7: `b = g(h^N)` (eq. 11), composed with
the objects by the decoder (eq. 12).

AIR alone explains an image by objects only, so any ink that is not an
object (a grey level, a shading, a texture) has to be explained by objects
too, and the count is wrong. Here the inference LSTM's output after its last
step, `h^N`, which has read the image and every object's latents, is decoded
into a background image `b [H, W]` in (0, 1), and the likelihood's mean is
the objects' canvas composed over it.

Two ways to get `b` from `h^N`:

* `background_latent_dim = 0` (the notes): `b = g(h^N)`, a deterministic
  function of the image and the sampled objects. The bound then scores
  `log p(x | z, b(x, z))`: the background is part of the decoder, not of
  the latent space.
* `background_latent_dim = d > 0`: a latent `z_bg [d]` with prior N(0, I)
  and posterior `q(z_bg | x, z) = N(mu(h^N), sigma(h^N))`, and `b = g(z_bg)`.
  Its `log p - log q` joins the log-weight, so the bound is a bound on the
  marginal likelihood of a proper generative model.

With `background_static`, `b` also has a full-resolution part that is a
parameter of the model rather than a function of the image:
`b = sigmoid(logit(b_coarse) + STATIC_RATE * s)`, `s [H, W]` learned
(starting at 0, where `b = b_coarse`). One image shared by all scenes cannot draw their digits
(they move), but it can draw a background that every scene shares in full
detail, which a coarse `b_coarse` cannot (docs/backgrounds.md: on one fixed
photograph the objects took its detail and every scene was over-counted).

Composition of the objects' canvas `c` (their `air.composite`) with `b`:

* `'over'`: objects occlude the background through their drawn intensity,
  `mean = c + (1 - min(c, 1)) * b`, which is how the offline data draw
  digits over backgrounds (`data.backgrounds.compose`).
* `'add'`: `mean = min(c + b, 1)`.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.scipy.special  # noqa: F401  (jax.scipy.special.logit)
import jax.numpy as jnp

from apdr_jax import distributions as dist
from apdr_jax import networks

#: `model.background`: no background (AIR as before), an MLP decoder, or
#: up-convolutions.
KINDS = ("none", "mlp", "conv")
#: `model.background_compose`.
COMPOSE_RULES = ("over", "add")
# The decoder's output bias: it starts nearly black, sigmoid(-3) = 0.05, so
# that on black data the component starts close to today's model.
_OUTPUT_BIAS = -3.0
_CONV_CHANNELS = 32
# With `static`: the image is `STATIC_RATE * static_logit`, so that Adam
# moves it STATIC_RATE times faster than the other weights. At the
# recipes' rate (3e-4) a logit then moves by up to 0.009 a step, and the
# image learns what every scene shares in a few hundred steps, before the
# objects do; at the common rate it took thousands, and the objects learnt
# the shared background first (docs/backgrounds.md).
STATIC_RATE = 30.0
# With `static`: the coarse part's intensities are clipped to
# [_CLIP, 1 - _CLIP] before their logit (sigmoid(-3) = 0.05 at the start).
_CLIP = 1e-4


def check(kind: str, compose: str, latent_dim: int, resolution: int = 0,
          canvas_size: int = 0, static: bool = False) -> None:
  """Raises `ValueError` naming the field for a bad background setting."""
  if not isinstance(static, bool):
    raise ValueError(f"background_static={static!r}; use True or False")
  if (not isinstance(resolution, int) or isinstance(resolution, bool)
      or not 0 <= resolution <= max(canvas_size, 1)):
    raise ValueError(f"background_resolution={resolution!r}; use an integer "
                     f"in 0..canvas_size ({canvas_size}); 0 = the canvas's")
  if kind not in KINDS:
    raise ValueError(f"background={kind!r}; use one of {KINDS}")
  if compose not in COMPOSE_RULES:
    raise ValueError(f"background_compose={compose!r}; use one of "
                     f"{COMPOSE_RULES}")
  if (not isinstance(latent_dim, int) or isinstance(latent_dim, bool)
      or latent_dim < 0):
    raise ValueError(f"background_latent_dim={latent_dim!r}; use an integer "
                     ">= 0 (0: b = g(h^N), no latent)")


class BackgroundNet(nn.Module):
  """`h^N [batch, lstm] -> b [batch, H, W]`, optionally through a latent.

  Attributes:
    kind: `'mlp'` or `'conv'`.
    canvas_size: `H = W`.
    hidden_size: the MLP's hidden width.
    latent_dim: 0 (deterministic) or the size of `z_bg`.
    resolution: the side at which `b` is decoded, then resized (bilinear) to
      the canvas; 0 = the canvas's. A coarse background can draw smooth
      fields but not strokes, so it cannot take the digits from the objects.
    static: add a learned full-resolution logit map shared by all images.
  """
  kind: str
  canvas_size: int
  hidden_size: int
  latent_dim: int = 0
  resolution: int = 0
  static: bool = False

  def setup(self):
    if self.static:
      self.static_logit = self.param(
          "static_logit", nn.initializers.zeros,
          (self.canvas_size, self.canvas_size))
    if self.latent_dim:
      self.posterior = networks.GaussianHead(
          self.latent_dim, hidden_sizes=(self.hidden_size,), scale_bias=0.0)
    size = self.resolution or self.canvas_size
    if self.kind == "mlp":
      self.decoder = networks.MLP((self.hidden_size,), size * size,
                                  output_bias_init=_OUTPUT_BIAS)
    else:
      side = -(-size // 4)  # two stride-2 up-convolutions, then a crop
      self.seed_layer = nn.Dense(side * side * _CONV_CHANNELS)
      self.up1 = nn.ConvTranspose(_CONV_CHANNELS, (4, 4), strides=(2, 2))
      self.up2 = nn.ConvTranspose(
          1, (4, 4), strides=(2, 2),
          bias_init=nn.initializers.constant(_OUTPUT_BIAS))

  def posterior_params(self, hidden):
    """`(loc, scale)` of `q(z_bg | h^N)`, `[batch, latent_dim]` each."""
    return self.posterior(hidden)

  def decode(self, code, detail=None):
    """`[batch, F] -> [batch, H, W]` in (0, 1).

    `detail` (a scalar in [0, 1], a warm-up) flattens the image-dependent
    part towards its spatial mean, `w * b + (1 - w) * mean(b)`; a static
    image is never flattened (it is what every scene shares).
    """
    size = self.resolution or self.canvas_size
    if self.kind == "mlp":
      logits = self.decoder(code).reshape(code.shape[0], size, size)
    else:
      side = -(-size // 4)
      x = nn.relu(self.seed_layer(code)).reshape(
          code.shape[0], side, side, _CONV_CHANNELS)
      x = self.up2(nn.relu(self.up1(x)))
      logits = x[:, :size, :size, 0]
    background = jax.nn.sigmoid(logits)
    if size != self.canvas_size:
      # Intensities, not logits, are interpolated: a sigmoid after the
      # resize would turn a coarse logit map into sharp-edged shapes.
      background = jax.image.resize(
          background, (code.shape[0], self.canvas_size, self.canvas_size),
          "bilinear")
    if detail is not None:
      flat = background.mean((-2, -1), keepdims=True)
      background = detail * background + (1.0 - detail) * flat
    if self.static:
      # In logit space, so that b stays in (0, 1); the clip keeps the logit
      # finite where the coarse part saturates.
      coarse = jnp.clip(background, _CLIP, 1.0 - _CLIP)
      background = jax.nn.sigmoid(jax.scipy.special.logit(coarse) +
                                  STATIC_RATE * self.static_logit)
    return background

  def __call__(self, hidden):
    """Touches every network once (used only by `init`)."""
    code = hidden
    if self.latent_dim:
      code = self.posterior_params(hidden)[0]
    return self.decode(code)


class Background(NamedTuple):
  """One sample's background.

  Attributes:
    image: `[batch, H, W]`, `b`.
    log_p_minus_log_q: `[batch]`, `log p(z_bg) - log q(z_bg | x, z)`; 0
      without a latent.
    log_q: `[batch]`, `log q(z_bg | x, z)`; 0 without a latent.
  """
  image: jax.Array
  log_p_minus_log_q: jax.Array
  log_q: jax.Array


def infer(apply_fn, latent_dim: int, hidden: jax.Array, rng: jax.Array, *,
          deterministic: bool = False, detach_samples: bool = False,
          detail: jax.Array | None = None) -> Background:
  """The background of each image from the LSTM's last output.

  Args:
    apply_fn: `apply_fn(method_name, *args)` calls a `BackgroundNet` method
      with the model's parameters (so that this module needs no params tree).
    latent_dim: `BackgroundNet.latent_dim`.
    hidden: `[batch, lstm]`, `h^N`.
    rng: a key for `z_bg`.
    deterministic: `z_bg` at its mean (evaluation).
    detach_samples: `z_bg` without a reparameterised gradient (RWS's wake
      update of q).
    detail: the warm-up's detail weight (see `BackgroundNet.decode`).

  Returns:
    `Background`.
  """
  batch = hidden.shape[0]
  if not latent_dim:
    zero = jnp.zeros((batch,), hidden.dtype)
    return Background(apply_fn("decode", hidden, detail), zero, zero)
  loc, scale = apply_fn("posterior_params", hidden)
  code = loc if deterministic else dist.normal_sample(rng, loc, scale)
  code = jax.lax.stop_gradient(code) if detach_samples else code
  log_q = dist.normal_log_prob(code, loc, scale).sum(-1)
  log_p = dist.normal_log_prob(code, 0.0, 1.0).sum(-1)
  return Background(apply_fn("decode", code, detail), log_p - log_q, log_q)


def compose(rule: str, objects: jax.Array, background: jax.Array) -> jax.Array:
  """The likelihood's mean: the objects' canvas `[..., H, W]` over `b`.

  Args:
    rule: one of `COMPOSE_RULES`.
    objects: the objects' composite canvas, `[..., H, W]`, `>= 0`.
    background: `b`, broadcastable to `objects`, in (0, 1).

  Returns:
    `[..., H, W]`.
  """
  if rule == "over":
    return objects + (1.0 - jnp.minimum(objects, 1.0)) * background
  return jnp.minimum(objects + background, 1.0)
