"""A user's own images for evaluation: loaded, checked, converted to [0, 1]."""

import os

import numpy as np

from apdr_jax.errors import DataError


def load_user_images(path: str, canvas_size: int,
                     sequences: bool = False) -> np.ndarray:
  """Reads `[num, H, W]` images from `.npy` or `.npz` (first array, or `images`).

  Args:
    path: the file.
    canvas_size: the `H = W` the model was trained on.
    sequences: expect `[num, T, H, W]` sequences instead.

  Returns:
    float32 `[num, H, W]` (or `[num, T, H, W]`) in [0, 1].

  Raises:
    DataError: missing or unreadable file, wrong shape, dtype or range.
  """
  if not os.path.exists(path):
    raise DataError(f"images file {path!r} does not exist")
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
      if not loaded.files:
        raise DataError(f"{path!r} holds no arrays")
      key = "images" if "images" in loaded.files else loaded.files[0]
      images = loaded[key]
    else:
      images = loaded
  except DataError:
    raise
  except Exception as e:  # numpy raises several types for a bad file
    raise DataError(f"cannot read {path!r} as .npy/.npz: {e}") from e
  return check_images(images, canvas_size, name=path, sequences=sequences)


def check_images(images: np.ndarray, canvas_size: int,
                 name: str = "images", sequences: bool = False) -> np.ndarray:
  """Validates and converts images (see `load_user_images`)."""
  images = np.asarray(images)
  if images.ndim == 2 and not sequences:
    images = images[None]
  rank = 4 if sequences else 3
  expected = (f"[num, T, {canvas_size}, {canvas_size}]" if sequences else
              f"[num, {canvas_size}, {canvas_size}]")
  if images.ndim != rank or images.shape[-2:] != (canvas_size, canvas_size):
    raise DataError(f"{name}: shape {images.shape}, expected {expected} "
                    "(the model's canvas size)")
  if sequences and images.shape[1] == 0:
    raise DataError(f"{name}: sequences with no frames")
  if images.shape[0] == 0:
    raise DataError(f"{name}: no images")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{name}: dtype {images.dtype}; use uint8 (0..255) or "
                    "floats in [0, 1]")
  if not np.all(np.isfinite(images)):
    raise DataError(f"{name}: contains NaN or infinite values")
  low, high = float(images.min()), float(images.max())
  if low < 0.0 or high > 1.0:
    raise DataError(f"{name}: values in [{low:g}, {high:g}]; floats must lie "
                    "in [0, 1] (divide uint8 data by 255, or pass it as uint8)")
  return images.astype(np.float32)
