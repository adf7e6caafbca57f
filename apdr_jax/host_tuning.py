"""Process-wide settings that make XLA's CPU backend faster (WORKSPACE.md).

`apply()` runs once, when `apdr_jax` is first imported, before JAX starts a
backend. Set `APDR_JAX_HOST_TUNING=0` to leave the process as it is.

* glibc's allocator keeps the memory it frees. XLA:CPU allocates a step's
  temporaries afresh at every call; with glibc's defaults, blocks above the
  mmap threshold are mapped and unmapped each time, so every page of them
  faults on first touch (15,000 faults per AIR VIMCO step here, about a third
  of its time). `mallopt` turns the mapping off and the trimming down; the
  price is that freed memory stays with the process.
* YNNPACK's reduce fusions are switched off through `XLA_FLAGS` (jaxlib 0.10
  only, the pinned version, where it was measured): XLA's own loops reduce
  the `[K, B, ...]` gradients faster here. A user's own setting of that flag
  is kept.
"""

import ctypes
import ctypes.util
import os
import sys

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_YNN_VALUE = "-LIBRARY_FUSION_TYPE_REDUCE"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4

_applied = False


def _tune_malloc() -> bool:
  """Keeps freed memory in glibc's heap; False where there is no glibc."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  ok = mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
  ok &= mallopt(_M_TOP_PAD, 64 * 2**20) == 1
  return bool(ok)


def _xla_flags(flags: str, jaxlib_version: str) -> str:
  """`flags` with the YNN setting added, unless set already or unknown."""
  if _YNN_FLAG in flags or not jaxlib_version.startswith("0.10."):
    return flags
  return f"{flags} {_YNN_FLAG}={_YNN_VALUE}".strip()


def apply() -> None:
  """Applies both settings once (see the module docstring)."""
  global _applied
  if _applied or os.environ.get("APDR_JAX_HOST_TUNING", "1") == "0":
    return
  _applied = True
  _tune_malloc()
  try:
    from jaxlib import version
  except ImportError:
    return
  os.environ["XLA_FLAGS"] = _xla_flags(os.environ.get("XLA_FLAGS", ""),
                                       version.__version__)
