"""Bad input, fuzzed (#26): images, files and configs a user can get wrong.

Every bad input gives an `ApdrError` whose message names the problem (the
Python API), or one `error: ...` line and exit status 2 (the launchers),
never a numpy, JAX or absl traceback; nothing in the workdir changes; valid
input (uint8 at the model's canvas size, floats in [0, 1]) keeps working.

Property-based (hypothesis, derandomized so that every run draws the same
examples) over dtypes (bool, signed and unsigned ints, float16/32/64,
complex, object, str, bytes, datetime), ranks 0-5, sizes (zero-length axes
included), NaN, inf and out-of-range values, files (.npy, pickled object
arrays, .npz with zero, one or several arrays, garbage and truncated bytes)
and config fields with values of the wrong type or below their minimum; a
few launcher runs check the same on the command line.
"""

import concurrent.futures
import glob
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import ml_collections
import numpy as np
import pytest

import apdr_jax
from apdr_jax import run_config
from apdr_jax.data import user_images
from apdr_jax.errors import ConfigError, DataError
from configs import tiny, tiny_apdr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANVAS = tiny.get_config().data.canvas_size
assert tiny_apdr.get_config().data.canvas_size == CANVAS

FUZZ = hypothesis.settings(
    max_examples=100, deadline=None, derandomize=True, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large,
                           hypothesis.HealthCheck.large_base_example])


# --- Arrays: every dtype, rank and size ------------------------------------

_OBJECTS = st.one_of(st.none(), st.integers(-300, 300), st.floats(),
                     st.text(max_size=3), st.lists(st.integers(), max_size=2))
_DTYPES = st.one_of(hnp.scalar_dtypes(),  # bool, ints, floats, complex, times
                    hnp.unicode_string_dtypes(max_len=4),
                    hnp.byte_string_dtypes(max_len=4),
                    st.just(np.dtype(object)))
_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=3),
    st.integers(0, 3).map(lambda n: (n, CANVAS, CANVAS)),
    st.tuples(st.integers(0, 2), st.integers(0, 3)).map(
        lambda nt: nt + (CANVAS, CANVAS)),
    st.just((CANVAS, CANVAS)),
    st.sampled_from([(0, 0, 0), (2, CANVAS, 0), (1, 0, CANVAS),
                     (2, 2, CANVAS, CANVAS + 1), (CANVAS,), (1, CANVAS)]))
# Values near the valid range: mostly in [0, 1], with NaN, inf, negatives,
# values above 1 and 0..255 data as floats among them.
_NEAR_VALID_FLOATS = st.one_of(
    st.floats(0.0, 1.0, width=16), st.floats(0.0, 1.0, width=16),
    st.sampled_from([np.nan, np.inf, -np.inf, -0.5, -1e-3, 1.0001, 1.5,
                     255.0, -0.0]))


@st.composite
def any_arrays(draw):
  """Any dtype and shape (mostly invalid)."""
  dtype = draw(_DTYPES)
  shape = draw(_SHAPES)
  elements = _OBJECTS if dtype.kind == "O" else None
  return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def near_valid_arrays(draw, sequences: bool = False, max_num: int = 3):
  """uint8 or float images at the canvas size, some with bad values or
  empty axes, some 2-D (one image)."""
  dtype = draw(st.sampled_from([np.uint8, np.float16, np.float32,
                                np.float64]))
  if sequences:
    shape = (draw(st.integers(0, max_num)), draw(st.integers(0, 3)),
             CANVAS, CANVAS)
  else:
    shape = draw(st.one_of(st.just((CANVAS, CANVAS)), st.integers(
        0, max_num).map(lambda n: (n, CANVAS, CANVAS))))
  elements = (st.integers(0, 255) if dtype == np.uint8 else
              _NEAR_VALID_FLOATS)
  return draw(hnp.arrays(dtype, shape, elements=elements))


def _problem(array: np.ndarray, sequences: bool) -> str | None:
  """What `check_images` must say about `array` (a regex), or None: valid."""
  if array.dtype != np.uint8 and array.dtype.kind != "f":
    return re.escape(f"dtype {array.dtype}; use uint8")
  shape = array.shape
  if array.ndim == 2 and not sequences:
    shape = (1,) + shape
  if len(shape) != (4 if sequences else 3) or shape[-2:] != (CANVAS, CANVAS):
    return r"shape \(.*\), expected \[num, "
  if shape[0] == 0:
    return "no sequences" if sequences else "no images"
  if sequences and shape[1] == 0:
    return "no frames"
  if array.dtype == np.uint8:
    return None
  if not np.all(np.isfinite(array)):
    return "NaN or infinite"
  if array.min() < 0 or array.max() > 1:
    return r"values in \[.*\]; floats must lie in \[0, 1\]"
  return None


def _check_result(out: np.ndarray, array: np.ndarray, sequences: bool):
  expected = array.shape if array.ndim != 2 or sequences else (
      (1,) + array.shape)
  assert out.dtype == np.float32 and out.shape == expected
  assert np.all((out >= 0) & (out <= 1))


def _check_message(error: Exception, *names: str):
  message = str(error)
  assert "\n" not in message, message
  for name in names:
    assert name in message, (name, message)


@hypothesis.given(array=st.one_of(any_arrays(), near_valid_arrays(),
                                  near_valid_arrays(sequences=True)),
                  sequences=st.booleans())
@FUZZ
def test_check_images_names_every_problem(array, sequences):
  before = array.copy()
  problem = _problem(array, sequences)
  if problem is None:
    _check_result(user_images.check_images(array, CANVAS, sequences=sequences),
                  array, sequences)
  else:
    with pytest.raises(DataError, match=problem) as caught:
      user_images.check_images(array, CANVAS, name="mine",
                               sequences=sequences)
    _check_message(caught.value, "mine: ")
  _assert_unchanged(array, before)


def _assert_unchanged(array: np.ndarray, before: np.ndarray):
  """The input is not changed. An object array holds the same objects (a NaN
  object is not equal to itself, so `==` cannot tell)."""
  assert array.dtype == before.dtype and array.shape == before.shape
  if array.dtype == object:
    assert all(a is b for a, b in zip(array.ravel(), before.ravel()))
  else:
    np.testing.assert_array_equal(array, before)


@pytest.mark.parametrize("value,match", [
    (np.float32(0.5), r"shape \(\)"),  # 0-d
    (np.zeros((0,), np.uint8), r"shape \(0,\)"),
    (np.zeros((3, 0, 0), np.uint8), r"shape \(3, 0, 0\)"),
    (np.zeros((2, CANVAS, 0), np.float32), "shape"),
    (np.zeros((0, CANVAS, CANVAS), np.uint8), "no images"),
    (np.zeros((1, CANVAS, CANVAS), bool), "dtype bool.*astype"),
    (np.zeros((1, CANVAS, CANVAS), np.int64), "dtype int64.*uint8"),
    (np.zeros((1, CANVAS, CANVAS), np.uint16), "dtype uint16"),
    (np.zeros((1, CANVAS, CANVAS), np.complex64), "dtype complex64"),
    (np.zeros((1, CANVAS, CANVAS), object), "dtype object"),
    (np.full((1, CANVAS, CANVAS), "a"), "dtype <U1.*strings"),
    (np.full((1, CANVAS, CANVAS), b"a"), r"dtype \|S1.*bytes"),
    (np.zeros((1, CANVAS, CANVAS), "datetime64[s]"), "dtype datetime64"),
    (np.zeros((1, CANVAS, CANVAS), [("a", "f4")]), "dtype"),
    ([[0.0, 1.0], [0.5]], "not one array of numbers"),  # ragged
    ("images.npy", "dtype <U"),  # a path where the array belongs
    (None, "dtype object"),
    (np.full((1, CANVAS, CANVAS), np.inf, np.float16), "NaN or infinite"),
    (np.full((1, CANVAS, CANVAS), -0.25, np.float64), r"\[-0.25, -0.25\]"),
    (np.full((1, CANVAS, CANVAS), 255.0, np.float32), "divide uint8"),
])
def test_check_images_named_cases(value, match):
  with pytest.raises(DataError, match=match):
    user_images.check_images(value, CANVAS)


def test_check_images_sequences_named_cases():
  one = np.zeros((3, CANVAS, CANVAS), np.uint8)
  with pytest.raises(DataError, match=r"leading axis \(x\[None\]\)"):
    user_images.check_images(one, CANVAS, sequences=True)
  with pytest.raises(DataError, match="no frames"):
    user_images.check_images(np.zeros((2, 0, CANVAS, CANVAS), np.uint8),
                             CANVAS, sequences=True)
  with pytest.raises(DataError, match="no sequences"):
    user_images.check_images(np.zeros((0, 2, CANVAS, CANVAS), np.uint8),
                             CANVAS, sequences=True)


def test_valid_images_keep_working():
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (2, CANVAS, CANVAS), dtype=np.uint8)
  np.testing.assert_allclose(user_images.check_images(raw, CANVAS),
                             raw / 255.0, rtol=1e-6)
  floats = rng.random((2, CANVAS, CANVAS))
  for value in (floats, floats.astype(np.float16), floats.tolist(),
                jnp.asarray(floats, jnp.bfloat16), floats[0],
                floats.astype(floats.dtype.newbyteorder())):
    out = user_images.check_images(value, CANVAS)
    assert out.dtype == np.float32 and out.shape[1:] == (CANVAS, CANVAS)
  sequences = user_images.check_images(raw[None], CANVAS, sequences=True)
  assert sequences.shape == (1, 2, CANVAS, CANVAS)


# --- Files -----------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  return tmp_path_factory.mktemp("fuzz_files")


def _expected_file_problem(arrays: dict, sequences: bool) -> str | None:
  """What `load_user_images` must say about an `.npz` of `arrays`."""
  if not arrays:
    return "holds no arrays"
  if "images" not in arrays and len(arrays) > 1:
    return f"holds {len(arrays)} arrays .*Name them 'images'"
  array = arrays["images"] if "images" in arrays else next(
      iter(arrays.values()))
  if array.dtype.hasobject:
    return "pickled object array"
  return _problem(array, sequences)


@hypothesis.given(
    arrays=st.one_of(
        st.one_of(any_arrays(), near_valid_arrays(max_num=2)).map(
            lambda a: {"": a}),  # "": np.save, one array in a .npy
        st.dictionaries(st.sampled_from(["images", "arr_0", "x", "frames"]),
                        st.one_of(any_arrays(), near_valid_arrays(max_num=2)),
                        max_size=3)),
    sequences=st.booleans())
@hypothesis.settings(FUZZ, max_examples=60)
def test_load_user_images_files(scratch, arrays, sequences):
  if list(arrays) == [""]:
    path = str(scratch / "images.npy")
    np.save(path, arrays[""], allow_pickle=True)  # object arrays pickled
    problem = _expected_file_problem({"x": arrays[""]}, sequences)
  else:
    path = str(scratch / "images.npz")
    np.savez(path, **arrays)
    problem = _expected_file_problem(arrays, sequences)
  if problem is None:
    out = user_images.load_user_images(path, CANVAS, sequences=sequences)
    array = arrays.get("images", next(iter(arrays.values())))
    _check_result(out, array, sequences)
  else:
    with pytest.raises(DataError, match=problem) as caught:
      user_images.load_user_images(path, CANVAS, sequences=sequences)
    _check_message(caught.value, path)


def _valid_npy(path):
  np.save(path, np.zeros((2, CANVAS, CANVAS), np.uint8))


def _valid_npz(path):
  np.savez(path, images=np.zeros((2, CANVAS, CANVAS), np.uint8))


@hypothesis.given(
    kind=st.sampled_from(["garbage", "npy_prefix", "zip_prefix",
                          "truncated_npy", "truncated_npz", "corrupt_npy"]),
    data=st.data())
@hypothesis.settings(FUZZ, max_examples=60)
def test_unreadable_files_are_named(scratch, kind, data):
  path = str(scratch / "bad.npy")
  if kind == "garbage":
    content = data.draw(st.binary(max_size=64))
  elif kind in ("npy_prefix", "zip_prefix"):
    prefix = b"\x93NUMPY" if kind == "npy_prefix" else b"PK\x03\x04"
    content = prefix + data.draw(st.binary(max_size=64))
  else:
    whole = str(scratch / ("whole.npz" if kind == "truncated_npz" else
                           "whole.npy"))
    (_valid_npz if kind == "truncated_npz" else _valid_npy)(whole)
    with open(whole, "rb") as f:
      content = f.read()
    if kind == "corrupt_npy":  # flip bytes in the header
      at = data.draw(st.integers(6, 127))
      content = (content[:at] + data.draw(st.binary(min_size=1, max_size=8))
                 + content[at + 1:])
    else:
      content = content[:data.draw(st.integers(0, len(content) - 1))]
  with open(path, "wb") as f:
    f.write(content)
  try:
    out = user_images.load_user_images(path, CANVAS)
  except DataError as e:
    _check_message(e, path)
  else:  # a flipped header byte may still describe the same array
    assert kind == "corrupt_npy", (kind, content)
    assert out.shape[1:] == (CANVAS, CANVAS)


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (os.mkdir, "is a directory"),
    (lambda p: _write(p, b""), "is empty"),
    (lambda p: _write(p, b"0.5, 0.5\n"), "not a .npy or .npz file"),
    (lambda p: np.save(p, np.array([{"a": 1}, None]), allow_pickle=True),
     "pickled object array"),
    (lambda p: np.savez(p, images=np.array([[1, "a"]], object)),
     "'images'.*pickled object array"),
    (lambda p: np.savez(p), "holds no arrays"),
    (lambda p: np.savez(p, a=np.zeros(1), b=np.zeros(1)),
     r"holds 2 arrays \('a', 'b'\).*'images'"),
    (lambda p: np.save(p, np.zeros((2, CANVAS, CANVAS), np.uint8)[:, :7]),
     r"shape \(2, 7, 32\)"),
])
def test_named_file_problems(tmp_path, make, match):
  path = str(tmp_path / "mine.npz")
  make(path)
  if not os.path.exists(path) and os.path.exists(path + ".npy"):
    os.rename(path + ".npy", path)  # np.save appends .npy
  with pytest.raises(DataError, match=match) as caught:
    user_images.load_user_images(path, CANVAS)
  _check_message(caught.value, path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a file without read permission")
def test_file_without_read_permission(tmp_path):
  path = tmp_path / "locked.npy"
  _valid_npy(path)
  path.chmod(0)
  try:
    with pytest.raises(DataError, match="cannot read.*ermission"):
      user_images.load_user_images(str(path), CANVAS)
  finally:
    path.chmod(0o600)


def test_valid_files_keep_working(tmp_path):
  images = np.random.default_rng(0).random((3, CANVAS, CANVAS))
  np.save(tmp_path / "a.npy", images.astype(np.float32))
  np.savez(tmp_path / "b.npz", other=np.zeros(3), images=images)
  np.savez_compressed(tmp_path / "c.npz", (images * 255).astype(np.uint8))
  for name in ("a.npy", "b.npz", "c.npz"):
    out = user_images.load_user_images(str(tmp_path / name), CANVAS)
    assert out.shape == (3, CANVAS, CANVAS) and out.dtype == np.float32


# --- The Python API on a trained workdir -----------------------------------

def _snapshot(root: str) -> dict:
  """Every path under `root` with its size, mtime and (files) content hash."""
  listing = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      stat = os.lstat(path)
      digest = None
      if name in files:
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      listing[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns,
                                               digest)
  return listing


@pytest.fixture(scope="module")
def air_model(tiny_air_run):
  workdir, _ = tiny_air_run
  before = _snapshot(workdir)
  model = apdr_jax.load(workdir)
  yield model
  assert _snapshot(workdir) == before, "the workdir changed"


@pytest.fixture(scope="module")
def apdr_model():
  """APDR at its initialisation (no training, no checkpoint): enough to check
  that bad input is refused before anything is compiled."""
  import jax
  from apdr_jax import api, apdr
  config = tiny_apdr.get_config()
  params = apdr.init_params(run_config.model_config(config),
                            jax.random.key(0))
  return api.Model(config, params, 0)


@hypothesis.given(array=st.one_of(any_arrays(),
                                  near_valid_arrays(max_num=2)))
@hypothesis.settings(FUZZ, max_examples=80)
def test_air_model_api(air_model, array):
  problem = _problem(array, sequences=False)
  if problem is None:  # at most two compiles: 1 and 2 images
    out = air_model.decompose(array)
    assert out["counts"].shape == (1 if array.ndim == 2 else len(array),)
    return
  for call in (air_model.decompose,
               lambda x: air_model.log_marginal(x, num_samples=2)):
    with pytest.raises(DataError, match=problem) as caught:
      call(array)
    _check_message(caught.value, "input: ")
  with pytest.raises(ConfigError, match="predict applies to APDR"):
    air_model.predict(array, num_frames=1)


@hypothesis.given(array=st.one_of(any_arrays(),
                                  near_valid_arrays(sequences=True)))
@hypothesis.settings(FUZZ, max_examples=60)
def test_apdr_model_api_refuses_bad_sequences(apdr_model, array):
  problem = _problem(array, sequences=True)
  if problem is None:  # valid: would compile APDR (tests/test_api.py runs it)
    return
  for call in (apdr_model.decompose,
               lambda x: apdr_model.log_marginal(x, num_samples=2),
               lambda x: apdr_model.predict(x, num_frames=1)):
    with pytest.raises(DataError, match=problem) as caught:
      call(array)
    _check_message(caught.value)


# --- Configs ---------------------------------------------------------------

def _fields(config):
  return run_config._typed_fields(config)  # pylint: disable=protected-access


def _bad_values(kind, minimum):
  """Values that are not of type `kind`, or below `minimum`."""
  wrong = [st.none(), st.lists(st.integers(), max_size=2),
           st.dictionaries(st.text("abc", max_size=2), st.integers(),
                           max_size=1)]
  if kind is not str:  # any text is of a string field's type (and '' often
    wrong.append(st.text(max_size=4))  # valid: data.cache_dir='' = default)
  if kind is int:
    wrong += [st.booleans(), st.floats().filter(lambda v: v != int(v) if
                                                np.isfinite(v) else True),
              st.just(2.0)]
    if minimum is not None:
      wrong.append(st.integers(max_value=minimum - 1))
  elif kind is float:
    wrong += [st.booleans(), st.sampled_from([np.nan, np.inf, -np.inf])]
  elif kind is bool:
    wrong += [st.integers(), st.floats(), st.sampled_from(["True", "false"])]
  else:  # str
    wrong += [st.integers(), st.floats(), st.booleans()]
  return st.one_of(*wrong)


@st.composite
def bad_configs(draw):
  base = draw(st.sampled_from([tiny.get_config, tiny_apdr.get_config]))()
  path, kind, minimum = draw(st.sampled_from(_fields(base)))
  value = draw(_bad_values(kind, minimum))
  tree = base.to_dict()
  holder = tree
  *parents, leaf = path.split(".")
  for part in parents:
    holder = holder[part]
  holder[leaf] = value
  return path, value, ml_collections.ConfigDict(tree)


@hypothesis.given(case=bad_configs())
@hypothesis.settings(FUZZ, max_examples=100)
def test_bad_config_values_are_named(case):
  path, value, config = case
  with pytest.raises(ConfigError) as caught:
    run_config.validate_config(config)
  _check_message(caught.value, f"{path}=")


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("batch_size"), "no field 'batch_size'"),
    (lambda t: t["model"].pop("num_slots"), "no field 'model.num_slots'"),
    (lambda t: t.pop("model"), "no 'model' section"),
    (lambda t: t.update(data=3), "data=3 must be a section"),
    (lambda t: t["model"].update(bogus=1),
     r"unknown config.model fields: \['bogus'\]"),
])
def test_missing_and_unknown_fields(edit, match):
  tree = tiny.get_config().to_dict()
  edit(tree)
  with pytest.raises(ConfigError, match=match):
    run_config.validate_config(ml_collections.ConfigDict(tree))


def test_every_shipped_config_and_run_still_validates():
  files = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                           recursive=True))
  names = [os.path.relpath(f, ROOT)[:-3].replace(os.sep, ".") for f in files
           if not f.endswith("__init__.py")]
  for name in names:
    module = importlib.import_module(name)
    if hasattr(module, "get_config"):
      run_config.validate_config(module.get_config())
  for path in glob.glob(os.path.join(ROOT, "runs", "*", "config.json")):
    with open(path) as f:
      run_config.validate_config(ml_collections.ConfigDict(json.load(f)))


# --- The launchers ---------------------------------------------------------

# launch.train and launch.evaluate parse flags through `common.parse_flags`
# (and launch.train defines its config flag with `common.define_config_file`):
# a flag absl or ml_collections cannot parse is one line with exit status 2.

# name: (file maker, words the error names); each is one launch.evaluate.
_EVALUATE_FILES = {
    "garbage": (lambda p: _write(p, b"\x00garbage" * 9),
                "not a .npy or .npz"),
    "truncated": (lambda p: _write(p, _npy_bytes()[:300]), "truncated"),
    "pickled": (lambda p: np.save(p, np.array([{"x": 1}], object),
                                  allow_pickle=True), "pickled object array"),
    "no_arrays": (lambda p: np.savez(p), "holds no arrays"),
    "several": (lambda p: np.savez(p, a=np.zeros(2), b=np.zeros(2)),
                "holds 2 arrays"),
    "directory": (os.mkdir, "is a directory"),
    "complex": (lambda p: np.save(p, np.zeros((2, CANVAS, CANVAS),
                                              np.complex64)),
                "dtype complex64"),
}
# name: (flags, words the error names). Without `--config=`, the default
# config's overrides are read when the flag is defined, before parsing.
_TRAIN_CASES = {
    "num_steps_zero": (["--config=configs/tiny.py", "--config.num_steps=0"],
                       "num_steps=0 must be >= 1"),
    "glimpse_negative": (["--config=configs/tiny.py",
                          "--config.model.glimpse_size=-4"],
                         "model.glimpse_size=-4 must be >= 1"),
    "batch_size_abc": (["--config=configs/tiny.py", "--config.batch_size=abc"],
                       "--config.batch_size=abc"),
    "bogus": (["--config=configs/tiny.py", "--config.model.bogus=1"],
              "--config.model.bogus: the config has no field 'bogus'"),
    "missing_config": (["--config=configs/nope.py"],
                       "--config=configs/nope.py: Failed loading"),
    "misspelt_default": (["--config.batch_sise=3"],
                         "--config.batch_sise: the config has no field "
                         "'batch_sise' (did you mean 'batch_size'?)"),
    "bogus_section_default": (["--config.bogus.x=1"],
                              "--config.bogus.x: the config has no field "
                              "'bogus'"),
}


def _write(path: str, content: bytes):
  with open(path, "wb") as f:
    f.write(content)


def _npy_bytes() -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, np.zeros((2, CANVAS, CANVAS), np.uint8))
  return buffer.getvalue()


def _launch(module: str, args: list[str], cache: str):
  env = dict(os.environ, APDR_JAX_CACHE=cache, XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", module] + args, cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def launcher_results(tiny_air_run, tmp_path_factory):
  """Every launcher case at once (three at a time: each is seconds of JAX
  start-up), with the trained workdir's listing before and after."""
  workdir, _ = tiny_air_run
  root = tmp_path_factory.mktemp("fuzz_cli")
  cache = str(tmp_path_factory.getbasetemp() / "scene_cache")
  jobs = {}
  for name, (make, _) in _EVALUATE_FILES.items():
    path = str(root / f"{name}.npy")
    make(path)
    if not os.path.exists(path):  # np.savez appends .npz
      os.rename(path + ".npz", path)
    jobs[name] = ("launch.evaluate", [f"--workdir={workdir}",
                                      f"--images={path}"])
  for name, (args, _) in _TRAIN_CASES.items():
    jobs[name] = ("launch.train", [f"--workdir={root / name}"] + args)
  before = _snapshot(workdir)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(_launch, module, args, cache)
               for name, (module, args) in jobs.items()}
    results = {name: future.result() for name, future in futures.items()}
  return results, root, before, _snapshot(workdir)


def _check_one_line_error(result, *words):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("name", sorted(_EVALUATE_FILES))
def test_evaluate_bad_images_file(launcher_results, name):
  results, root, before, after = launcher_results
  _check_one_line_error(results[name], _EVALUATE_FILES[name][1],
                        str(root / f"{name}.npy"))
  assert after == before, "launch.evaluate changed the workdir"


@pytest.mark.parametrize("name", sorted(_TRAIN_CASES))
def test_train_bad_config_flags(launcher_results, name):
  results, root, _, _ = launcher_results
  _check_one_line_error(results[name], _TRAIN_CASES[name][1])
  workdir = root / name
  assert not workdir.exists() or not any(workdir.iterdir()), (
      f"launch.train wrote {sorted(os.listdir(workdir))} before failing")


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.update(learning_rat=1e-3),
     r"unknown config fields: \['learning_rat'\]"),
    (lambda t: t["data"].update(backgroud="grey"),
     r"unknown config.data fields: \['backgroud'\]"),
    (lambda t: t.update(presence_warmup_floor=1.0), "presence_warmup_floor=1.0"),
    (lambda t: t.update(background_warmup_steps=10),
     "background_warmup_steps applies to AIR with a background"),
])
def test_unknown_fields_and_background_warm_ups_are_named(edit, match):
  tree = tiny.get_config().to_dict()
  edit(tree)
  with pytest.raises(ConfigError, match=match):
    run_config.validate_config(ml_collections.ConfigDict(tree))
