"""Test set-up: 8 fake CPU devices and cheap compilation.

The device count must be set before JAX initialises its backend, so it is done
here, at import time, for the whole test session. Tests that want one device
say so through `config.num_devices = 1`.
"""

import atexit
import fcntl
import os
import shutil
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

# As in the launchers: the package applies `host_tuning` before JAX starts.
import apdr_jax  # noqa: E402,F401

# Tests run tiny models whose time is mostly compilation: compile cheaply, and
# reuse compiled programs across tests and the launchers' subprocesses.
#
# One cache folder per test run and per xdist worker, never shared: JAX 0.10
# writes a cache entry in place without a lock (`lru_cache.LRUCache.put` with
# eviction off), so a process reading an entry that another is still writing
# deserialises a torn executable and dies of a segmentation fault. That
# happened twice when both workers shared one folder (docs/faults.md).
# Subprocesses that a test starts one at a time inherit their worker's folder;
# tests that start processes side by side take it away from them.
jax.config.update("jax_disable_most_optimizations", True)
_CACHE = os.path.join(
    os.environ.get("TMPDIR", "/tmp"), "apdr_jax_test_xla_cache",
    os.environ.get("PYTEST_XDIST_TESTRUNUID", f"run{os.getpid()}"),
    os.environ.get("PYTEST_XDIST_WORKER", "main"))
# Set, not defaulted: xdist's workers inherit the controller's environment.
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path_factory, monkeypatch):
  """Every test shares one scene cache that is not the user's."""
  cache = tmp_path_factory.getbasetemp() / "scene_cache"
  monkeypatch.setenv("APDR_JAX_CACHE", str(cache))


def _train_tiny(tmp_path_factory, name: str):
  """Trains `configs/<name>.py` on one device, once per test run.

  Under pytest-xdist the workers share the run's base folder: the first
  worker to ask trains under an exclusive `flock` (released if it dies) and
  leaves `result.pickle`; the others wait, then read the same workdir. The
  tests only read these workdirs (they copy one before changing it).

  Returns:
    (workdir, the result of `train.train_and_evaluate`).
  """
  import importlib
  import pickle
  from apdr_jax import train
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's folder, above each worker's own
  path, done = root / f"shared_{name}", root / f"shared_{name}.pickle"
  with open(root / f"shared_{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if done.exists():
      with open(done, "rb") as f:
        return str(path), pickle.load(f)
    shutil.rmtree(path, ignore_errors=True)  # a worker died while training
    previous = os.environ.get("APDR_JAX_CACHE")
    os.environ["APDR_JAX_CACHE"] = str(root / "shared_scene_cache")
    try:
      config = importlib.import_module(f"configs.{name}").get_config()
      config.num_devices = 1
      result = train.train_and_evaluate(config, str(path))
    finally:
      if previous is None:
        os.environ.pop("APDR_JAX_CACHE")
      else:
        os.environ["APDR_JAX_CACHE"] = previous
    with open(f"{done}.tmp", "wb") as f:
      pickle.dump(result, f)
    os.replace(f"{done}.tmp", done)
  return str(path), result


@pytest.fixture(scope="session")
def tiny_air_run(tmp_path_factory):
  """A tiny AIR workdir (4 steps, then the final evaluation)."""
  return _train_tiny(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_apdr_run(tmp_path_factory):
  """A tiny APDR workdir (4 steps over two curriculum stages, then the final
  evaluation), shared by the trainer, launcher and notebook tests."""
  return _train_tiny(tmp_path_factory, "tiny_apdr")


# The files whose APDR compiles take minutes, slowest first, so that they
# are handed out first. (Under `--dist loadfile`, which the suite used until
# worker crashes had to be rerun, xdist put these few-test files last and
# left one worker idle for the last minutes of a cold run.)
_SLOWEST_FILES = ("test_apdr_train.py", "test_multiprocess.py",
                  "test_parallel.py", "test_notebook.py", "test_apdr.py",
                  "test_launch.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False  # keep the order set below


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return (_SLOWEST_FILES.index(name) if name in _SLOWEST_FILES
            else len(_SLOWEST_FILES))
  items.sort(key=rank)  # stable: a file's own tests keep their order
