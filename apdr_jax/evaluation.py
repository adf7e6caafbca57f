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
  return out.slots.presence, boxes, out.slots.z_where, out.canvas


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
    `z_where [num, N, 3]`, `reconstructions [num, H, W]`.
  """
  parts = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    parts.append(jax.device_get(_decompose(model_config, params,
                                           jnp.asarray(chunk))))
  presence, boxes, z_where, canvas = (np.concatenate(p) for p in zip(*parts))
  return dict(counts=presence.sum(-1).astype(np.int32), presence=presence,
              boxes=boxes, z_where=z_where, reconstructions=canvas)


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
