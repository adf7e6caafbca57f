"""Held-out evaluation: counts, boxes, ELBO and IWAE (DESIGN §6).

All heavy work is jitted once per shape; the loops here are over evaluation
batches only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from apdr_jax import air
from apdr_jax import glimpse
from apdr_jax import objectives


@functools.partial(jax.jit, static_argnums=0)
def _decompose(model_config: air.AIRConfig, params, images):
  """Posterior modes: presence, `z_where`, reconstruction."""
  out = air.log_weight_terms(model_config, params, images, jax.random.key(0),
                             jnp.asarray(0.5), deterministic=True)
  size = model_config.canvas_size
  boxes = glimpse.box_corners(out.slots.z_where, size, size)
  return (out.slots.presence, boxes, out.slots.z_where, out.canvas,
          out.background)


def decompose(model_config: air.AIRConfig, params, images: np.ndarray,
              batch_size: int = 500):
  """Counts and boxes for each image from the posterior modes.

  Args:
    model_config: the architecture.
    params: trained parameters.
    images: `[num, H, W]` float32 in [0, 1].
    batch_size: evaluation batch.

  Returns:
    dict of numpy arrays: `counts [num]`, `presence [num, N]`,
    `boxes [num, N, 4]` (x_min, y_min, x_max, y_max in pixels),
    `z_where [num, N, 3]`, `reconstructions [num, H, W]`; with a
    background component also `backgrounds [num, H, W]`, the inferred ones.
  """
  parts = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    parts.append(jax.device_get(_decompose(model_config, params,
                                           jnp.asarray(chunk))))
  presence, boxes, z_where, canvas, backgrounds = (np.concatenate(p)
                                                   for p in zip(*parts))
  result = dict(counts=presence.sum(-1).astype(np.int32), presence=presence,
                boxes=boxes, z_where=z_where, reconstructions=canvas)
  if model_config.background != "none":
    result["backgrounds"] = backgrounds
  return result


#: A pixel belongs to a digit when the digit layer recovered from the image
#: and the true background is above this (the data's ink threshold).
DIGIT_INK = 0.1


def background_scores(images: np.ndarray, reconstructions: np.ndarray,
                      true_backgrounds: np.ndarray,
                      backgrounds: np.ndarray | None) -> dict:
  """How well a model separates the background from the digits.

  The data draw digits over their background, `x = d + (1 - d) * b`, so the
  digit layer is `d = (x - b) / (1 - b)`; its ink pixels are `d > DIGIT_INK`.

  Args:
    images: `[num, H, W]` in [0, 1].
    reconstructions: `[num, H, W]`, the model's mean of p(x | z).
    true_backgrounds: `[num, H, W]` in [0, 1].
    backgrounds: `[num, H, W]`, the inferred ones, or None (a model without
      a background component: its background is 0).

  Returns:
    dict of floats: `reconstruction_mse` (per pixel); `background_mse`, the
    inferred background's error per pixel, off the digits' ink (where the
    background is visible); `background_ink_absorbed`, on the ink pixels,
    the fraction of the digits' contrast `x - b` that the inferred
    background reproduces (`clip(b_hat - b, 0, x - b)`): 0 when the
    objects explain the digits, 1 when the background has swallowed them.
  """
  images = np.asarray(images, np.float64)
  true_b = np.asarray(true_backgrounds, np.float64)
  b_hat = (np.zeros_like(true_b) if backgrounds is None
           else np.asarray(backgrounds, np.float64))
  digits = (images - true_b) / np.maximum(1.0 - true_b, 1e-6)
  ink = digits > DIGIT_INK
  contrast = np.where(ink, images - true_b, 0.0)
  absorbed = np.where(ink, np.clip(b_hat - true_b, 0.0, contrast), 0.0)
  return dict(
      reconstruction_mse=float(np.mean((images - reconstructions) ** 2)),
      background_mse=float(np.sum(np.where(ink, 0.0, (b_hat - true_b) ** 2))
                           / max(np.sum(~ink), 1)),
      background_ink_absorbed=float(absorbed.sum() / max(contrast.sum(),
                                                         1e-9)))


def count_accuracy(predicted: np.ndarray, true: np.ndarray) -> dict:
  """Overall and per-true-count accuracy, and the fractions of images counted
  too many (`over_count`) and too few (`under_count`), as plain floats."""
  result = {"count_accuracy": float(np.mean(predicted == true)),
            "over_count": float(np.mean(predicted > true)),
            "under_count": float(np.mean(predicted < true))}
  for count in np.unique(true):
    mask = true == count
    result[f"count_accuracy_{int(count)}"] = float(
        np.mean(predicted[mask] == count))
  return result


@functools.partial(jax.jit, static_argnums=(0, 4))
def _bounds(model_config, params, images, rng, num_samples, rho):
  gates = air.image_gates(model_config, params, images)
  out = jax.vmap(lambda k: air.log_weight_terms(
      model_config, params, images, k, rho, image_gates=gates))(
          jax.random.split(rng, num_samples))
  log_weight = out.terms.sum(-1)  # [K, B]
  return (objectives.iwae_bound(log_weight), log_weight.mean(0),
          out.log_likelihood.mean(0), out.kl.mean(0))


def bounds(model_config: air.AIRConfig, params, images: np.ndarray,
           rng: jax.Array, rho: float, num_samples: int = 100,
           batch_size: int = 100) -> dict:
  """ELBO and IWAE(K) per image in nats, with the ELBO's likelihood and KL.

  Args:
    model_config: the architecture.
    params: trained parameters.
    images: `[num, H, W]` float32 in [0, 1].
    rng: a key.
    rho: the presence prior's ρ to evaluate under (the final training value).
    num_samples: K for the IWAE estimate.
    batch_size: images per evaluation batch.

  Returns:
    dict of floats: `iwae`, `elbo`, `log_likelihood`, `kl` (means over images).
  """
  sums = np.zeros(4)
  for index, start in enumerate(range(0, len(images), batch_size)):
    chunk = jnp.asarray(images[start:start + batch_size])
    values = _bounds(model_config, params, chunk, jax.random.fold_in(rng, index),
                     num_samples, jnp.asarray(rho, jnp.float32))
    sums += np.array([float(v.sum()) for v in values])
  iwae, elbo, log_lik, kl = sums / len(images)
  return dict(iwae=iwae, elbo=elbo, log_likelihood=log_lik, kl=kl)


def log_marginal(model_config: air.AIRConfig, params, images: np.ndarray,
                 rng: jax.Array, rho: float, num_samples: int = 100,
                 batch_size: int = 100) -> np.ndarray:
  """IWAE(`num_samples`) estimate of `log p(x)` per image, `[num]` nats."""
  values = []
  for index, start in enumerate(range(0, len(images), batch_size)):
    chunk = jnp.asarray(images[start:start + batch_size])
    values.append(np.asarray(_bounds(
        model_config, params, chunk, jax.random.fold_in(rng, index),
        num_samples, jnp.asarray(rho, jnp.float32))[0]))
  return np.concatenate(values)
