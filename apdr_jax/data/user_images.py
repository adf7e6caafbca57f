"""A user's own images for evaluation: loaded, checked, converted to [0, 1].

Files are read without unpickling anything (`allow_pickle=False`, and an
object array's header is refused before its data are read); every problem
(missing, unreadable, truncated, not numpy, no or several arrays, wrong
dtype, shape or values) is a `DataError` whose message names it.
"""

import math
import os

import numpy as np

from apdr_jax.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
# A zip file's first local header, or an empty zip's end record (np.savez
# with no arrays).
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
_ML_FLOATS = ("bfloat16", "float8", "float6", "float4")
_DTYPE_HINTS = {
    "b": " (booleans: convert with .astype(np.float32))",
    "i": " (integers: convert 0..255 data with .astype(np.uint8))",
    "u": " (integers: convert 0..255 data with .astype(np.uint8))",
    "c": " (complex numbers: take the real part or the magnitude)",
    "O": " (an object array: Python objects, ragged or mixed values)",
    "U": " (strings)",
    "S": " (bytes)",
    "M": " (dates and times)",
    "m": " (time differences)",
    "V": " (a structured or raw-bytes array)",
}


def load_user_images(path: str, canvas_size: int,
                     sequences: bool = False) -> np.ndarray:
  """Reads `[num, H, W]` images from `.npy` or `.npz`.

  An `.npz` must hold one array, or name the images `images`.

  Args:
    path: the file.
    canvas_size: the `H = W` the model was trained on.
    sequences: expect `[num, T, H, W]` sequences instead.

  Returns:
    float32 `[num, H, W]` (or `[num, T, H, W]`) in [0, 1].

  Raises:
    DataError: missing, unreadable, truncated or not a numpy file; an
      `.npz` with no arrays or several without `images`; a pickled (object)
      array; wrong shape, dtype or range.
  """
  if not os.path.exists(path):
    raise DataError(f"images file {path!r} does not exist")
  if os.path.isdir(path):
    raise DataError(f"images file {path!r} is a directory; give a .npy or "
                    ".npz file")
  try:
    with open(path, "rb") as f:
      start = f.read(len(_NPY_MAGIC))
      f.seek(0)
      if start.startswith(_NPY_MAGIC):
        images = _read_npy(f, path)
      elif start[:4] in _ZIP_MAGICS:
        images = _read_npz(f, path)
      elif not start:
        raise DataError(f"cannot read images file {path!r}: it is empty")
      else:
        raise DataError(f"cannot read images file {path!r}: it is not a .npy "
                        "or .npz file (write one with np.save or np.savez)")
  except DataError:
    raise
  except OSError as e:  # permission denied, I/O error, ...
    raise DataError(f"cannot read images file {path!r}: "
                    f"{e.strerror or e}") from e
  except Exception as e:  # numpy and zipfile raise several types
    raise DataError(f"cannot read images file {path!r}: it is corrupt or "
                    f"truncated ({type(e).__name__}: {_one_line(e)})") from e
  return check_images(images, canvas_size, name=path, sequences=sequences)


def _is_float(dtype: np.dtype) -> bool:
  """numpy's floats, and JAX's bfloat16 and float8s (ml_dtypes: kind "V")."""
  return dtype.kind == "f" or (dtype.kind == "V" and dtype.names is None and
                               dtype.name.startswith(_ML_FLOATS))


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def _check_header(f, name: str):
  """Reads an array header from `f`: its shape and dtype, or a `DataError`
  for an object (pickled) array, before any of its data is read."""
  version = np.lib.format.read_magic(f)
  reader = _HEADER_READERS.get(version)
  if reader is None:  # 3.0: only for unicode field names; read_array checks
    return None, None
  shape, _, dtype = reader(f)
  if dtype.hasobject:
    raise DataError(f"{name} holds a pickled object array; it is not "
                    "loaded (nothing is unpickled): save a numeric array, "
                    "uint8 (0..255) or floats in [0, 1]")
  return shape, dtype


def _read_npy(f, path: str) -> np.ndarray:
  shape, dtype = _check_header(f, f"images file {path!r}")
  if shape is not None:
    needed = math.prod(shape) * dtype.itemsize
    available = os.fstat(f.fileno()).st_size - f.tell()
    if available < needed:
      raise DataError(f"cannot read images file {path!r}: it is truncated "
                      f"(its header says {dtype} {shape}, {needed} bytes of "
                      f"data, but it holds {available})")
  f.seek(0)
  return np.lib.format.read_array(f, allow_pickle=False)


def _read_npz(f, path: str) -> np.ndarray:
  with np.load(f, allow_pickle=False) as archive:
    names = list(archive.files)
    if not names:
      raise DataError(f"images file {path!r} holds no arrays")
    if "images" in names:
      key = "images"
    elif len(names) == 1:
      key = names[0]
    else:
      listed = ", ".join(repr(n) for n in names[:10])
      more = f" and {len(names) - 10} more" if len(names) > 10 else ""
      raise DataError(f"images file {path!r} holds {len(names)} arrays "
                      f"({listed}{more}); which are the images? Name them "
                      "'images' (np.savez(file, images=...)) or save one "
                      "array")
    member = key if key in archive.zip.namelist() else key + ".npy"
    with archive.zip.open(member) as raw:
      if raw.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
        raise DataError(f"images file {path!r}: array {key!r} is not a "
                        ".npy array")
    with archive.zip.open(member) as raw:
      _check_header(raw, f"images file {path!r} (array {key!r})")
    return archive[key]


def check_images(images, canvas_size: int, name: str = "images",
                 sequences: bool = False) -> np.ndarray:
  """Validates and converts images (see `load_user_images`).

  Args:
    images: `[num, H, W]` (or one `[H, W]` image), or `[num, T, H, W]`
      sequences; uint8 (0..255) or floats in [0, 1]; anything `np.asarray`
      reads (numpy or JAX arrays, nested lists).
    canvas_size: the `H = W` the model was trained on.
    name: what the messages call the input.
    sequences: expect `[num, T, H, W]`.

  Returns:
    float32 `[num, H, W]` (or `[num, T, H, W]`) in [0, 1].

  Raises:
    DataError: naming the first problem: not an array, dtype, shape, no
      images or frames, NaN or infinite values, values outside [0, 1].
  """
  try:
    images = np.asarray(images)
  except (ValueError, TypeError) as e:  # ragged lists, mixed types
    raise DataError(f"{name}: not one array of numbers ({_one_line(e)})"
                    ) from e
  if images.dtype != np.uint8 and not _is_float(images.dtype):
    hint = _DTYPE_HINTS.get(images.dtype.kind, "")
    raise DataError(f"{name}: dtype {images.dtype}; use uint8 (0..255) or "
                    f"floats in [0, 1]{hint}")
  shape = images.shape
  if images.ndim == 2 and not sequences:
    images = images[None]
  rank = 4 if sequences else 3
  expected = (f"[num, T, {canvas_size}, {canvas_size}]" if sequences else
              f"[num, {canvas_size}, {canvas_size}]")
  if images.ndim != rank or images.shape[-2:] != (canvas_size, canvas_size):
    hint = ""
    if sequences and images.ndim == 3 and shape[-2:] == (canvas_size,
                                                        canvas_size):
      hint = "; one sequence [T, H, W] needs a leading axis (x[None])"
    raise DataError(f"{name}: shape {shape}, expected {expected} (the "
                    f"model's canvas size){hint}")
  if images.shape[0] == 0:
    raise DataError(f"{name}: no {'sequences' if sequences else 'images'} "
                    f"(shape {shape})")
  if sequences and images.shape[1] == 0:
    raise DataError(f"{name}: sequences with no frames (shape {shape})")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.all(np.isfinite(images)):
    raise DataError(f"{name}: contains NaN or infinite values")
  low, high = float(images.min()), float(images.max())
  if low < 0.0 or high > 1.0:
    raise DataError(f"{name}: values in [{low:g}, {high:g}]; floats must lie "
                    "in [0, 1] (divide uint8 data by 255, or pass it as uint8)")
  return images.astype(np.float32)
