"""Training and held-out data of a run, and their placement on the devices.

The training split is memory-mapped from the cache and laid out as `B`
streams (one per global batch position) sharded over the `data` mesh axis, so
each process reads from disk only its own devices' streams and the update step
draws its batch on device (see `train.make_update_step`).
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from apdr_jax import data
from apdr_jax import parallel
from apdr_jax import run_config
from apdr_jax.errors import ConfigError


def place_train_streams(images: np.ndarray, batch_size: int, mesh):
  """Places training scenes as `B` streams split over the `data` axis.

  Row `r` of the scenes goes to stream `r % B` (rows beyond a multiple of `B`
  are dropped), and batch position `j` always draws from stream `j`. The
  device that holds batch positions `j` therefore holds stream `j`, so drawing
  a batch moves no data between devices, and the batch is the same whatever
  the number of devices or hosts. Each process places, and reads from
  `images`, only the streams of its own devices (a memory-mapped `images`
  is read only there).

  Args:
    images: `[num, H, W]` uint8.
    batch_size: the global batch size `B`.
    mesh: the device mesh.

  Returns:
    A global `[num // B, B, H, W]` array sharded on axis 1.
  """
  rows = (len(images) // batch_size) * batch_size
  if rows == 0:
    raise ConfigError(f"{len(images)} training scenes are fewer than "
                      f"batch_size={batch_size}")
  streams = images[:rows].reshape((rows // batch_size, batch_size) +
                                  images.shape[1:])
  sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  placed = set()

  def read(index):
    # With a memory-mapped `images`, only these rows are read from disk.
    placed.update(range(batch_size)[index[1]])
    return np.asarray(streams[index])

  array = jax.make_array_from_callback(streams.shape, sharding, read)
  if jax.process_count() > 1:
    print(f"Process {jax.process_index()} of {jax.process_count()} read "
          f"training streams {sorted(placed)} of {batch_size} "
          f"({len(placed) * streams[:, 0].nbytes / 2**20:.1f} MiB).",
          flush=True)
  return array


def load_data(config):
  """Training and held-out data of a run config (uint8 images, from the cache).

  Returns:
    `(train, test)` dicts (the training arrays are read-only memory maps of
    the cache file): scenes (`images [n, H, W]`, `counts`, `boxes`) or,
    with `data.kind='sequences'`, sequences (`images [n, T, H, W]`,
    `counts [n, T]`, `boxes`, `ids`, `presence`), and `backgrounds` unless
    `data.background` is 'black' (see `data.backgrounds`). With
    `data.train_enter_leave_fraction > 0` (sequences, `enter_leave=False`),
    that fraction of the training sequences has digits entering and leaving.
  """
  d = config.data
  cache_dir = d.cache_dir or None
  if d.get("kind", "scenes") == "sequences":
    common = dict(canvas_size=d.canvas_size, num_frames=d.num_frames,
                  min_digits=d.min_digits, max_digits=d.max_digits,
                  overlap=d.overlap, source=d.source, seed=d.seed,
                  speed_min=d.speed_min, speed_max=d.speed_max,
                  velocity_noise=d.velocity_noise, enter_leave=d.enter_leave,
                  background_pan=d.get("background_pan", 0.0))
    load, recipe, count = (data.load_sequences, data.SequenceRecipe,
                           "num_sequences")
  else:
    common = dict(canvas_size=d.canvas_size, min_digits=d.min_digits,
                  max_digits=d.max_digits, overlap=d.overlap,
                  max_iou=d.max_iou, source=d.source, seed=d.seed)
    load, recipe, count = data.load_scenes, data.SceneRecipe, "num_scenes"
    if d.get("background_pan", 0.0):
      raise ConfigError(f"data.background_pan={d.background_pan} moves a "
                        "sequence's background; static scenes (data.kind="
                        "'scenes') have none to move: leave it 0")
  common.update(background=d.get("background", "black"),
                background_varies=d.get("background_varies", False),
                background_intensity=d.get("background_intensity", 0.5))
  splits = {"train": dict(common), "test": dict(common)}
  train_mix = d.get("train_enter_leave_fraction", 0.0)
  if train_mix > 0:
    # Training sequences only: the held-out ones follow `data.enter_leave`.
    splits["train"].update(enter_leave=True, enter_leave_fraction=train_mix)
  # The training split is memory-mapped: `place_train_streams` then reads from
  # disk only the rows of this process's streams.
  return tuple(load(recipe(split=split, **{count: num}, **splits[split]),
                    cache_dir, mmap=split == "train")
               for split, num in (("train", d.num_train_scenes),
                                  ("test", d.num_test_scenes)))


def training_images(config, train) -> np.ndarray:
  """What the update step draws from: scenes, sequences for APDR, or every
  frame of every sequence for the frame-by-frame AIR baseline."""
  images = train["images"]
  frames_of_sequences = (config.data.get("kind", "scenes") == "sequences" and
                         not run_config.is_sequential(config))
  if frames_of_sequences:
    images = images.reshape((-1,) + images.shape[2:])
  return images
