"""Load a trained run and use it: `apdr_jax.load(workdir)` returns a `Model`.

  import apdr_jax
  model = apdr_jax.load("runs/air")
  result = model.decompose(images)        # counts, boxes, presence, ...
  model.log_marginal(images, num_samples=100)

`Model` is a thin layer over the pure functions (`air`, `apdr`, `evaluation`,
`sequence_evaluation`): it checks the input once (`data.check_images`), runs
the jitted functions on the host's default device and returns numpy arrays.
`model.config` (the run's config), `model.model_config` (the architecture)
and `model.params` are there to call those functions directly.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import checkpoints
from apdr_jax import evaluation
from apdr_jax import glimpse
from apdr_jax import run_config
from apdr_jax import sequence_evaluation
from apdr_jax.data import user_images
from apdr_jax.errors import CheckpointError
from apdr_jax.errors import ConfigError


def _whole(name: str, value, minimum: int) -> int:
  """`value` as an int >= `minimum`, or a `ConfigError` naming it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
  if value < minimum:
    raise ConfigError(f"{name}={value} must be >= {minimum}")
  return int(value)


class Model:
  """A trained AIR or APDR model, restored from a `launch.train` workdir.

  Attributes:
    config: the run's `ml_collections.ConfigDict` (as in `config.json`).
    model_config: the architecture, `air.AIRConfig` or `apdr.APDRConfig`.
    params: the trained parameters (a pytree of arrays).
    step: the training step of the restored checkpoint.
    is_sequential: True for APDR (inputs are sequences `[num, T, H, W]`).
    rho: the presence prior's probability of one more object at `step`.
  """

  def __init__(self, config: ml_collections.ConfigDict, params, step: int):
    self.config = config
    self.model_config = run_config.model_config(config)
    self.params = params
    self.step = int(step)
    self.is_sequential = run_config.is_sequential(config)
    self.rho = float(run_config.rho_at(config, self.step))

  @property
  def canvas_size(self) -> int:
    return int(self.config.data.canvas_size)

  def __repr__(self) -> str:
    kind = "APDR" if self.is_sequential else "AIR"
    return (f"Model({kind}, step={self.step}, canvas={self.canvas_size}, "
            f"slots={self.model_config.num_slots})")

  def _check(self, x, name: str = "input") -> np.ndarray:
    return user_images.check_images(x, self.canvas_size, name=name,
                                    sequences=self.is_sequential)

  def decompose(self, x, **options) -> dict:
    """q's single pass (its modes): objects, boxes and reconstructions.

    Args:
      x: AIR: `[num, H, W]` (or one `[H, W]` image); APDR: `[num, T, H, W]`;
        uint8 (0..255) or floats in [0, 1].
      **options: APDR only, `sequence_evaluation.decompose`'s search options
        (`best_of=K`, `both_directions=True`, `particles=True`), on top of
        the single pass.

    Returns:
      dict of numpy arrays: `counts [num]`, `presence [num, N]`,
      `boxes [num, N, 4]` (x0, y0, x1, y1 in pixels),
      `reconstructions [num, H, W]`; AIR with a background component adds
      `backgrounds [num, H, W]`, the inferred backgrounds; APDR adds a frame
      axis after `num` and `ids [num, T, N]` (-1 where absent).
    """
    x = self._check(x)
    if not self.is_sequential:
      if options:
        raise ConfigError(f"decompose options {sorted(options)} apply to "
                          "APDR models only")
      return evaluation.decompose(self.model_config, self.params, x)
    return sequence_evaluation.decompose(self.model_config, self.params, x,
                                         rho=self.rho, **options)

  def log_marginal(self, x, num_samples: int = 100, seed: int = 0,
                   batch_size: int = 10) -> np.ndarray:
    """IWAE(`num_samples`) estimate of `log p(x)` in nats, per image or
    sequence: `[num]` (a lower bound in expectation).

    Args:
      x: as for `decompose`.
      num_samples: K, samples of q per input.
      seed: the samples' seed.
      batch_size: inputs per batch (memory: `K * batch_size` samples).
    """
    num_samples = _whole("num_samples", num_samples, 1)
    batch_size = _whole("batch_size", batch_size, 1)
    seed = _whole("seed", seed, 0)
    x = self._check(x)
    return (sequence_evaluation.log_marginal if self.is_sequential else
            evaluation.log_marginal)(
                self.model_config, self.params, x, jax.random.key(seed),
                self.rho, num_samples, batch_size)

  def sample(self, num: int, seed: int = 0, rho: float = 0.5,
             num_frames: int | None = None) -> dict:
    """Scenes (AIR) or sequences (APDR) drawn from the generative model.

    Args:
      num: how many.
      seed: the seed.
      rho: the presence (discovery) prior's probability of one more object.
        Training fixes a tiny rho (1e-5) as a price per object, under which
        nearly every sample is empty; 0.5 draws 0, 1, 2, ... objects with
        probability 1/2, 1/4, 1/8, ...
      num_frames: APDR: frames per sequence (default: the training length).

    Returns:
      dict of numpy arrays: `images [num, H, W]` (the mean of p(x | z)),
      `presence [num, N]`, `boxes [num, N, 4]`; APDR adds a frame axis
      after `num` and `ids`.
    """
    num, seed = _whole("num", num, 1), _whole("seed", seed, 0)
    if num_frames is not None:
      num_frames = _whole("num_frames", num_frames, 1)
    if not (isinstance(rho, (int, float, np.floating)) and 0.0 <= rho <= 1.0):
      raise ConfigError(f"rho={rho!r} must be a probability in [0, 1]")
    key = jax.random.key(seed)
    mc = self.model_config
    if not self.is_sequential:
      presence, z_where, _, canvas = air.sample_prior(mc, self.params, key,
                                                      num, rho)
      return _numpy(dict(images=canvas, presence=presence,
                         boxes=self._boxes(z_where)))
    frames = num_frames or int(self.config.data.num_frames)
    empty = jnp.zeros((num, 0, self.canvas_size, self.canvas_size))
    out = _predict(mc, self.params, empty, frames, key, rho, False)
    return _numpy(dict(images=out["canvas"], presence=out["presence"],
                       ids=out["ids"], boxes=self._boxes(out["z_where"])))

  def predict(self, sequences, num_frames: int, seed: int = 0) -> dict:
    """APDR: infers the given frames, then rolls the prior forward.

    Args:
      sequences: `[num, T0, H, W]`, the frames to condition on.
      num_frames: how many frames to predict after them.
      seed: the seed of q's reading (the prediction uses the prior's means).

    Returns:
      dict of numpy arrays: `images [num, num_frames, H, W]`, `presence`,
      `ids` `[num, num_frames, N]`, `boxes [num, num_frames, N, 4]`.
    """
    if not self.is_sequential:
      raise ConfigError("predict applies to APDR models (sequences); this "
                        "workdir holds an AIR model")
    num_frames, seed = _whole("num_frames", num_frames, 1), _whole(
        "seed", seed, 0)
    x = self._check(sequences, "sequences")
    out = _predict(self.model_config, self.params, jnp.asarray(x), num_frames,
                   jax.random.key(seed), self.rho, True)
    return _numpy(dict(images=out["canvas"], presence=out["presence"],
                       ids=out["ids"], boxes=self._boxes(out["z_where"])))

  def _boxes(self, z_where: jax.Array) -> jax.Array:
    return glimpse.box_corners(z_where, self.canvas_size, self.canvas_size)


_jit_predict = jax.jit(apdr.predict, static_argnums=(0, 3, 6))


def _predict(model_config, params, images, num_future, rng, rho,
             deterministic):
  return _jit_predict(model_config, params, images, num_future, rng,
                      jnp.asarray(rho, jnp.float32), deterministic)


def _numpy(tree: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(tree).items()}


def load(workdir: str) -> Model:
  """The model of the newest checkpoint in a `launch.train` workdir.

  Args:
    workdir: the `--workdir` of a training run.

  Returns:
    a `Model` on the host's default device.

  Raises:
    CheckpointError: the workdir does not exist, is not a training workdir,
      or holds no readable checkpoint. Nothing in it is written, except
      that a damaged newest checkpoint is moved to `damaged_checkpoints/`
      (with a warning) and the one before it is loaded (`model.step` says
      which).
  """
  from apdr_jax import train  # the trainer's state layout, read lazily
  if not os.path.isdir(workdir):
    raise CheckpointError(f"{workdir!r} is not a directory (a workdir written "
                          "by launch.train)")
  config = checkpoints.load_config(workdir)
  try:
    run_config.validate_config(config)
    target = train.create_train_state(config, jax.random.key(0))
  except (AttributeError, KeyError, TypeError, ConfigError) as e:
    raise CheckpointError(f"{checkpoints.config_path(workdir)} is not an "
                          f"apdr_jax run config ({type(e).__name__}: {e})"
                          ) from e
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise CheckpointError(f"no checkpoint under {workdir}/checkpoints (has "
                          "training saved one yet?)")
  step, state = checkpoints.restore_latest(
      checkpoints.manager(workdir, read_only=True), target)
  if state is None:
    raise CheckpointError(f"no checkpoint under {workdir}/checkpoints (has "
                          "training saved one yet?)")
  return Model(config, jax.device_get(state.params), step)
