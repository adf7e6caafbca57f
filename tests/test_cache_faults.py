"""Fault tests of the data cache (apdr_jax.data.cache), issue #26 part 5.

A full disk while the cache is written (simulated ENOSPC at every byte offset
of the write, at fsync, at the rename; and a real, tiny tmpfs), files of
another recipe or version, damaged files, temporary files of killed writers,
and concurrent writers of one path.
"""

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from apdr_jax import data
from apdr_jax.data import cache
from apdr_jax.data import scenes as scenes_lib
from apdr_jax.errors import ApdrError, DataError

RECIPE = data.SceneRecipe(num_scenes=12, seed=5)
OTHER = dataclasses.replace(RECIPE, seed=6)  # same shapes, other scenes
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(recipe):
  """The arrays of ``recipe`` generated from scratch, without any cache."""
  return scenes_lib.generate_scenes(recipe, *scenes_lib._recipe_bank(recipe))


@pytest.fixture(scope="module")
def fresh():
  return _fresh(RECIPE)


@pytest.fixture(scope="module")
def fresh_other():
  return _fresh(OTHER)


def _expected(recipe=RECIPE):
  return scenes_lib._expected_arrays(recipe)


def _path(cache_dir, recipe=RECIPE):
  return data.scene_cache_path(recipe, str(cache_dir))


def _write(path, arrays, recipe=RECIPE, version=scenes_lib.FORMAT_VERSION):
  cache.write_arrays(path, recipe.to_json(), version,
                     {key: arrays[key] for key in arrays})


def _snapshot(directory):
  """``{name: bytes}`` of every file of ``directory``."""
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as handle:
      out[name] = handle.read()
  return out


def _assert_same(got, want):
  """Bit for bit: the same names, dtypes, shapes and bytes."""
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key].dtype == want[key].dtype, key
    assert got[key].shape == want[key].shape, key
    assert np.asarray(got[key]).tobytes() == want[key].tobytes(), key


def _no_temps(directory):
  return [name for name in os.listdir(directory) if name.endswith(".tmp")]


class _CountingGenerate:
  """Counts the calls of ``scenes_lib.generate_scenes``."""

  def __init__(self, monkeypatch):
    self.calls = 0
    self._real = scenes_lib.generate_scenes
    monkeypatch.setattr(scenes_lib, "generate_scenes", self)

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self._real(*args, **kwargs)


# ------------------------------------------------------------- a full disk


class _FullFile(io.FileIO):
  """A file on a disk with ``room`` bytes free: the write that crosses it
  writes what fits (a short write, as the kernel does), the next one raises
  ``OSError(ENOSPC)``. ``room=None``: unlimited, only counts the bytes."""

  def __init__(self, name, room):
    super().__init__(name, "x")
    self.room = room
    self.written = 0

  def write(self, b):
    b = bytes(b)
    if self.room is not None:
      if self.room <= 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      b = b[:self.room]
      self.room -= len(b)
    n = super().write(b)
    self.written += n
    return n


def _full_disk(monkeypatch, room):
  """Makes the cache's temporary files ``_FullFile(room)``; returns them."""
  files = []

  def fake_open(file, mode="r", *args, **kwargs):
    if mode == "xb":
      raw = _FullFile(file, room)
      files.append(raw)
      return io.BufferedWriter(raw)
    return open(file, mode, *args, **kwargs)

  monkeypatch.setattr(cache, "open", fake_open, raising=False)
  return files


def _bytes_of_a_write(monkeypatch, tmp_path, arrays):
  """How many bytes writing ``arrays`` sends to the file (zipfile seeks back
  to patch headers, so this exceeds the file's size)."""
  with monkeypatch.context() as patch:
    files = _full_disk(patch, None)
    path = str(tmp_path / "probe" / "probe.npz")
    _write(path, arrays)
  shutil.rmtree(tmp_path / "probe")
  return files[0].written


def _check_enospc_error(exc, path):
  message = str(exc)
  assert isinstance(exc, DataError) and isinstance(exc, ApdrError)
  assert "\n" not in message
  assert path in message
  assert "No space left on device (ENOSPC)" in message
  assert "cache directory" in message  # what to do about it
  assert isinstance(exc.__cause__, OSError)
  assert exc.__cause__.errno == errno.ENOSPC


def test_enospc_at_every_offset_keeps_previous_files(tmp_path, monkeypatch,
                                                     fresh, fresh_other):
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  _write(path, fresh)                                 # the previous good file
  _write(_path(cache_dir, OTHER), fresh_other, OTHER)  # another recipe's
  before = _snapshot(cache_dir)
  total = _bytes_of_a_write(monkeypatch, tmp_path, fresh)
  offsets = sorted(set(np.linspace(0, total - 1, 61).astype(int).tolist()) |
                   {0, 1, 2, 29, 30, 31, 100, total - 2, total - 1})
  for room in offsets:
    with monkeypatch.context() as patch:
      files = _full_disk(patch, room)
      with pytest.raises(DataError) as info:
        _write(path, fresh)  # the same recipe, rewritten
    _check_enospc_error(info.value, path)
    assert files[0].written == room  # it did fill the disk before failing
    assert _snapshot(cache_dir) == before, room  # byte for byte, no temps
  # With room for every byte the same wrapper writes a good file.
  with monkeypatch.context() as patch:
    _full_disk(patch, total)
    _write(path, fresh)
  _assert_same(cache.read_arrays(path, RECIPE.to_json(),
                                 scenes_lib.FORMAT_VERSION, _expected()), fresh)
  assert len(offsets) >= 60


def test_enospc_without_a_previous_file_leaves_nothing(tmp_path, monkeypatch,
                                                       fresh):
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  for room in (0, 1000, 20000):
    with monkeypatch.context() as patch:
      _full_disk(patch, room)
      with pytest.raises(DataError) as info:
        _write(path, fresh)
    _check_enospc_error(info.value, path)
    assert os.listdir(cache_dir) == []


@pytest.mark.parametrize("stage", ["open", "fsync", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                  errno.EACCES, errno.EIO])
def test_write_errors_at_each_stage(tmp_path, monkeypatch, fresh, stage, code):
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  _write(path, fresh)
  before = _snapshot(cache_dir)
  error = OSError(code, os.strerror(code))

  def fail(*args, **kwargs):
    raise error

  with monkeypatch.context() as patch:
    if stage == "open":
      patch.setattr(cache, "open", fail, raising=False)
    else:  # a full disk or quota may only be reported at fsync (e.g. NFS)
      patch.setattr(os, stage, fail)
    with pytest.raises(DataError) as info:
      _write(path, fresh)
  message = str(info.value)
  assert path in message and "\n" not in message
  assert f"{os.strerror(code)} ({errno.errorcode[code]})" in message
  assert info.value.__cause__ is error
  assert _snapshot(cache_dir) == before


@pytest.mark.parametrize("mmap", [False, True])
def test_full_disk_in_load_scenes_warns_and_goes_on(tmp_path, monkeypatch,
                                                    fresh, fresh_other, mmap):
  """The data is in memory: the run goes on, with one warning, uncached."""
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  # A stale file at the path (another version) and another recipe's file.
  _write(path, fresh_other, version=scenes_lib.FORMAT_VERSION + 1)
  _write(_path(cache_dir, OTHER), fresh_other, OTHER)
  before = _snapshot(cache_dir)
  with monkeypatch.context() as patch, warnings.catch_warnings(
      record=True) as caught:
    _full_disk(patch, 5000)
    warnings.simplefilter("always")
    got = data.load_scenes(RECIPE, cache_dir=str(cache_dir), mmap=mmap)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 2, messages
  assert "format version differs" in messages[0]
  assert messages[1] == (
      f"Could not write the cache file {path}: No space left on device "
      "(ENOSPC); free some space or choose another cache directory (config "
      "data.cache_dir or $APDR_JAX_CACHE); continuing with the scenes in "
      "memory, without a cache file.")
  assert all(w.category is RuntimeWarning for w in caught)
  assert all(w.filename == __file__ for w in caught)  # the caller's line
  _assert_same(got, fresh)
  assert not any(isinstance(v, np.memmap) for v in got.values())
  assert _snapshot(cache_dir) == before  # nothing partial, nothing lost
  # Space freed: the next load rejects the stale file again and writes it.
  with pytest.warns(RuntimeWarning, match="format version differs"):
    again = data.load_scenes(RECIPE, cache_dir=str(cache_dir), mmap=mmap)
  _assert_same(again, fresh)
  _assert_same(cache.read_arrays(path, RECIPE.to_json(),
                                 scenes_lib.FORMAT_VERSION, _expected()), fresh)
  assert _no_temps(cache_dir) == []


def test_full_disk_in_load_sequences_warns_and_goes_on(tmp_path, monkeypatch):
  recipe = data.SequenceRecipe(num_sequences=4, num_frames=3, seed=2)
  want = data.load_sequences(recipe, cache_dir=str(tmp_path / "fresh"))
  _full_disk(monkeypatch, 3000)
  with pytest.warns(RuntimeWarning,
                    match=r"No space left on device \(ENOSPC\).*sequences in"):
    got = data.load_sequences(recipe, cache_dir=str(tmp_path / "cache"))
  _assert_same(got, want)
  assert os.listdir(tmp_path / "cache") == []


_REAL_DISK_SCRIPT = textwrap.dedent("""
    import dataclasses, hashlib, json, os, sys, warnings
    from apdr_jax import data
    from apdr_jax.data import cache
    from apdr_jax.errors import DataError
    cache_dir = sys.argv[1]
    small = data.SceneRecipe(num_scenes=2, seed=1)
    big = data.SceneRecipe(num_scenes=200, seed=1)
    data.load_scenes(small, cache_dir=cache_dir)
    small_path = data.scene_cache_path(small, cache_dir)
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
    out = {"small_before": digest(small_path)}
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      got = data.load_scenes(big, cache_dir=cache_dir)
    out["warnings"] = [str(w.message) for w in caught]
    out["images"] = hashlib.sha256(got["images"].tobytes()).hexdigest()
    try:
      cache.write_arrays(data.scene_cache_path(big, cache_dir), big.to_json(),
                         data.FORMAT_VERSION, got)
      out["error"] = None
    except DataError as exc:
      out["error"] = str(exc)
    out["files"] = sorted(os.listdir(cache_dir))
    out["small_after"] = digest(small_path)
    out["small_name"] = os.path.basename(small_path)
    print(json.dumps(out))
""")


def _private_mount_prefix(directory):
  """``unshare`` arguments under which a tmpfs can be mounted on
  ``directory`` (root, or an unprivileged user namespace), or ``None``."""
  if shutil.which("unshare") is None:
    return None
  for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
    probe = subprocess.run(
        prefix + ["sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {directory}"],
        capture_output=True, timeout=30, check=False)
    if probe.returncode == 0:
      return prefix
  return None


def test_real_full_disk_on_a_tiny_tmpfs(tmp_path):
  """ENOSPC from a real file system: a 64 KiB tmpfs in a mount namespace."""
  mount = tmp_path / "tiny"
  mount.mkdir()
  prefix = _private_mount_prefix(mount)
  if prefix is None:
    pytest.skip("cannot mount a tmpfs in a private mount namespace here")
  script = tmp_path / "fill.py"
  script.write_text(_REAL_DISK_SCRIPT)
  env = dict(os.environ, PYTHONPATH=REPO, APDR_JAX_HOST_TUNING="0")
  command = (f"mount -t tmpfs -o size=64k tmpfs {mount} && "
             f"exec {sys.executable} {script} {mount}")
  proc = subprocess.run(prefix + ["sh", "-c", command], env=env,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  big_path = data.scene_cache_path(data.SceneRecipe(num_scenes=200, seed=1),
                                   str(mount))
  assert out["warnings"] == [
      f"Could not write the cache file {big_path}: No space left on device "
      "(ENOSPC); free some space or choose another cache directory (config "
      "data.cache_dir or $APDR_JAX_CACHE); continuing with the scenes in "
      "memory, without a cache file."]
  want = _fresh(data.SceneRecipe(num_scenes=200, seed=1))["images"]
  assert out["images"] == hashlib.sha256(want.tobytes()).hexdigest()
  assert out["error"].startswith(f"Could not write the cache file {big_path}: "
                                 "No space left on device (ENOSPC)")
  assert out["files"] == [out["small_name"]]  # no partial file left
  assert out["small_after"] == out["small_before"]


# ---------------------------------------------- files that must not be read


def _damage(path, how, fresh_other):
  """Puts a file at ``path`` that must not be read as RECIPE's arrays."""
  good = _fresh(RECIPE)
  if how == "other_recipe":
    _write(path, fresh_other, OTHER)  # valid, same shapes, another recipe
  elif how == "other_version":
    _write(path, fresh_other, version=scenes_lib.FORMAT_VERSION + 1)
  elif how == "older_version":
    _write(path, fresh_other, version=scenes_lib.FORMAT_VERSION - 1)
  elif how.startswith("truncate"):
    fraction = float(how.split("_")[1])
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
      handle.truncate(int(size * fraction))
  elif how == "garbage":
    size = os.path.getsize(path)
    with open(path, "wb") as handle:
      handle.write(np.random.default_rng(0).bytes(size))
  elif how == "garbage_header":  # zip magic and directory kept, a header not
    with open(path, "r+b") as handle:
      handle.seek(4)
      handle.write(b"\x00garbage" * 8)
  elif how == "wrong_dtype":
    _write(path, dict(good, images=good["images"].astype(np.float32)))
  elif how == "wrong_shape":
    _write(path, dict(good, images=good["images"][:, :-1]))
  elif how == "too_few_rows":
    _write(path, {key: value[:-1] for key, value in good.items()})
  elif how == "missing_array":
    _write(path, {key: value for key, value in good.items()
                  if key != "boxes"})
  elif how == "no_recipe":
    with open(path, "wb") as handle:
      np.savez(handle, format_version=np.array(scenes_lib.FORMAT_VERSION),
               **good)
  elif how == "pickled_recipe":
    with open(path, "wb") as handle:
      np.savez(handle, recipe=np.array([RECIPE.to_json(), None], object),
               format_version=np.array(scenes_lib.FORMAT_VERSION), **good)
  else:
    raise AssertionError(how)


_DAMAGES = {
    # how: what the warning must say
    "other_recipe": "recipe stored in the file differs",
    "other_version": "format version differs",
    "older_version": "format version differs",
    "truncate_0.0": "",
    "truncate_0.01": "",
    "truncate_0.5": "",
    "truncate_0.99": "",
    "garbage": "",
    "garbage_header": "",
    "wrong_dtype": "images has float32",
    "wrong_shape": "images has uint8",
    "too_few_rows": "images has uint8",
    "missing_array": "KeyError",
    "no_recipe": "KeyError",
    "pickled_recipe": "ValueError",
}


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("how", sorted(_DAMAGES))
def test_bad_file_is_never_read(tmp_path, monkeypatch, fresh, fresh_other,
                                how, mmap):
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  _write(path, fresh)
  _damage(path, how, fresh_other)
  counter = _CountingGenerate(monkeypatch)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = data.load_scenes(RECIPE, cache_dir=str(cache_dir), mmap=mmap)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1, messages
  assert messages[0].startswith(f"Scene cache {path} is unreadable or stale (")
  assert messages[0].endswith("); regenerating it.")
  assert "\n" not in messages[0]
  assert _DAMAGES[how] in messages[0]
  assert counter.calls == 1  # regenerated, not read
  _assert_same(got, fresh)
  assert isinstance(got["images"], np.memmap) == mmap
  # The file was rewritten, valid; the next load reads it.
  _assert_same(cache.read_arrays(path, RECIPE.to_json(),
                                 scenes_lib.FORMAT_VERSION, _expected()), fresh)
  assert os.listdir(cache_dir) == [os.path.basename(path)]
  _assert_same(data.load_scenes(RECIPE, cache_dir=str(cache_dir)), fresh)
  assert counter.calls == 1


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def _temp_name(path, pid, host=None):
  host = cache._host() if host is None else host
  return f"{path}.{host}.{pid}.{'ab' * 16}.tmp"


@pytest.mark.parametrize("main_file", ["missing", "valid"])
def test_stale_temp_of_a_killed_writer(tmp_path, monkeypatch, fresh,
                                       fresh_other, main_file):
  cache_dir = tmp_path / "cache"
  cache_dir.mkdir()
  path = _path(cache_dir)
  if main_file == "valid":
    _write(path, fresh)
  # A killed writer's files: one complete (another recipe's arrays, never
  # renamed), one partial.
  complete = _temp_name(path, _dead_pid())
  _write(str(tmp_path / "x.npz"), fresh_other)
  os.replace(tmp_path / "x.npz", complete)
  partial = f"{path}.{cache._host()}.{_dead_pid()}.{'cd' * 16}.tmp"
  with open(partial, "wb") as handle:
    handle.write(b"PK\x03\x04partial")
  counter = _CountingGenerate(monkeypatch)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = data.load_scenes(RECIPE, cache_dir=str(cache_dir))
  messages = sorted(str(w.message) for w in caught)
  assert len(messages) == 2, messages
  for temp, message in zip(sorted([complete, partial]), messages):
    assert message.startswith(f"Removed {temp}, a temporary scene cache file "
                              "left by a killed writer (")
  _assert_same(got, fresh)
  assert counter.calls == (1 if main_file == "missing" else 0)
  assert os.listdir(cache_dir) == [os.path.basename(path)]


def test_live_writers_temps_are_kept(tmp_path, fresh):
  cache_dir = tmp_path / "cache"
  cache_dir.mkdir()
  path = _path(cache_dir)
  live = [
      _temp_name(path, os.getpid()),      # this process (another thread)
      _temp_name(path, os.getppid()),     # a live process of this host
      _temp_name(path, 12345, "otherhost"),  # another host's, recent
      f"{path}.{os.getpid()}.{'ef' * 16}.tmp",  # an older name, recent
  ]
  old = [
      _temp_name(path, 12345, "otherhost2"),  # another host's, untouched 2 h
      f"{path}.777.{'12' * 16}.tmp",         # an older name, untouched 2 h
  ]
  for name in live + old:
    with open(name, "wb") as handle:
      handle.write(b"partial")
  for name in old:
    os.utime(name, (os.stat(name).st_atime, os.stat(name).st_mtime - 7200))
  with pytest.warns(RuntimeWarning, match="killed writer") as caught:
    got = data.load_scenes(RECIPE, cache_dir=str(cache_dir))
  assert len(caught) == 2
  _assert_same(got, fresh)
  assert sorted(os.listdir(cache_dir)) == sorted(
      [os.path.basename(path)] + [os.path.basename(n) for n in live])


# ------------------------------------------------------ concurrent writers


def test_concurrent_thread_writers_and_a_reader(tmp_path, fresh):
  cache_dir = tmp_path / "cache"
  path = _path(cache_dir)
  writers, rounds = 4, 5
  barrier = threading.Barrier(writers + 1)
  done = threading.Event()
  errors, reads = [], []

  def write():
    try:
      barrier.wait()
      for _ in range(rounds):
        _write(path, fresh)
    except BaseException as exc:  # pylint: disable=broad-except
      errors.append(exc)

  def read():
    barrier.wait()
    while not done.is_set():
      try:
        got = cache.read_arrays(path, RECIPE.to_json(),
                                scenes_lib.FORMAT_VERSION, _expected(),
                                mmap=len(reads) % 2 == 1)
      except FileNotFoundError:
        continue
      except BaseException as exc:  # pylint: disable=broad-except
        errors.append(exc)
        return
      reads.append(got)

  threads = [threading.Thread(target=write) for _ in range(writers)]
  reader = threading.Thread(target=read)
  for thread in threads + [reader]:
    thread.start()
  for thread in threads:
    thread.join()
  done.set()
  reader.join()
  assert errors == []
  for got in reads:  # every read saw a whole file
    _assert_same(got, fresh)
  assert os.listdir(cache_dir) == [os.path.basename(path)]
  _assert_same(cache.read_arrays(path, RECIPE.to_json(),
                                 scenes_lib.FORMAT_VERSION, _expected()), fresh)


_CONCURRENT_SCRIPT = textwrap.dedent("""
    import hashlib, sys, time
    from apdr_jax import data
    recipe = data.SceneRecipe(num_scenes=int(sys.argv[2]), seed=8)
    while time.time() < float(sys.argv[3]):  # start together
      time.sleep(0.001)
    got = data.load_scenes(recipe, cache_dir=sys.argv[1], mmap=True)
    print(hashlib.sha256(got["images"].tobytes()).hexdigest())
""")


def test_concurrent_processes_generating_one_recipe(tmp_path):
  cache_dir = tmp_path / "cache"
  script = tmp_path / "load.py"
  script.write_text(_CONCURRENT_SCRIPT)
  num = 400
  env = dict(os.environ, PYTHONPATH=REPO, APDR_JAX_HOST_TUNING="0")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # side by side: see conftest
  start = time.time() + 3.0
  procs = [subprocess.Popen([sys.executable, str(script), str(cache_dir),
                             str(num), str(start)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = [proc.communicate(timeout=120) for proc in procs]
  for proc, (out, err) in zip(procs, outs):
    assert proc.returncode == 0, err
    assert "Warning" not in err, err
  recipe = data.SceneRecipe(num_scenes=num, seed=8)
  want = hashlib.sha256(_fresh(recipe)["images"].tobytes()).hexdigest()
  assert [out.strip() for out, _ in outs] == [want, want]
  path = data.scene_cache_path(recipe, str(cache_dir))
  assert os.listdir(cache_dir) == [os.path.basename(path)]
  _assert_same(cache.read_arrays(path, recipe.to_json(),
                                 scenes_lib.FORMAT_VERSION,
                                 _expected(recipe)), _fresh(recipe))
