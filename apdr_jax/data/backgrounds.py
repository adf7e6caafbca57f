"""Backgrounds behind the digits of scenes and sequences, offline and graded.

Levels, from easiest to hardest (:data:`LEVELS`):

* ``'black'``: zeros (the plain multi-MNIST data; the default);
* ``'grey'``: a constant, ``intensity`` (or, varying, uniform in
  ``[0.2 * intensity, intensity]`` per image);
* ``'smooth'``: a linear ramp in a random direction plus 1-3 Gaussian bumps
  (random centres, widths 0.2-0.5 of the canvas), spanning ``[0, intensity]``;
* ``'noise'``: i.i.d. uniform pixel noise in ``[0, intensity]``;
* ``'grid'``: 1-pixel horizontal and vertical lines of value ``intensity``,
  period uniform over 6..12 pixels, random phase, 0 elsewhere;
* ``'texture'``: crops of natural photographs shipped inside pip wheels (no
  download): scikit-learn's ``china.jpg`` and ``flower.jpg`` (CC BY 2.0) and
  matplotlib's ``grace_hopper.jpg`` (public domain), in grayscale, downscaled
  by 2, randomly flipped, times ``intensity`` (the photograph's own
  contrast: a crop of sky stays nearly flat).
  Train crops come from the left 75% of each photograph's columns and test
  crops from the right 25%, so held-out data show texture never trained on.

With ``varies=False`` one background is drawn per dataset and shared by every
image (or sequence) of both splits, as behind a fixed camera: held-out scenes
show the background trained on, with new digits (for ``texture``, a crop of
the training region); with ``varies=True`` each gets its own. A sequence's
background is the same in every frame, or, with ``pan != 0``, a window that
slides by ``pan`` pixels per frame over a wider field (linear interpolation for
fractional offsets).

Digits are drawn over the background with :func:`compose`. The recipes draw
backgrounds from their own generator (:data:`SEED_TAG`), so the digits,
positions, counts and boxes of a recipe are the same on every background.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Dict, List, Optional

import numpy as np

from apdr_jax.errors import ConfigError, DataError

__all__ = ["FIELDS", "LEVELS", "SEED_TAG", "Painter", "canonical_fields",
           "compose", "generate", "validate"]

LEVELS = ("black", "grey", "smooth", "noise", "grid", "texture")
#: Recipe fields of the background and their defaults (``background_pan`` is
#: a field of sequence recipes only).
FIELDS = {"background": "black", "background_varies": False,
          "background_intensity": 0.5, "background_pan": 0.0}
#: Backgrounds of a recipe are drawn from ``default_rng([seed, SEED_TAG])``.
SEED_TAG = 0xB6
#: Fraction of each photograph's columns (from the left) used by train crops.
TRAIN_FRACTION = 0.75
#: (package, path inside the package) of the texture photographs, in order.
TEXTURE_FILES = (
    ("sklearn", ("datasets", "images", "china.jpg")),
    ("sklearn", ("datasets", "images", "flower.jpg")),
    ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")))

_TEXTURES: Dict[str, np.ndarray] = {}


def _is_number(value) -> bool:
  return (isinstance(value, (float, int, np.floating, np.integer))
          and not isinstance(value, (bool, np.bool_)))


def validate(level, intensity, varies, pan, where: str) -> None:
  """Checks the background fields of a recipe.

  Args:
    level: one of :data:`LEVELS`.
    intensity: the brightest background value, a number in ``(0, 1]``
      (``[0, 1]`` for ``'black'``, which ignores it).
    varies: ``True`` (a background per image) or ``False`` (one per dataset).
    pan: finite number, pixels per frame the background slides (0: fixed).
    where: prefix of the messages, e.g. ``'SceneRecipe'``.

  Raises:
    ConfigError: naming the first invalid field and its allowed values.
  """
  if not isinstance(level, str) or level not in LEVELS:
    raise ConfigError(f"{where}.background must be one of "
                      f"{', '.join(repr(x) for x in LEVELS)}, got {level!r}.")
  if (not _is_number(intensity) or not math.isfinite(intensity)
      or not 0.0 <= intensity <= 1.0
      or (intensity == 0.0 and level != "black")):
    raise ConfigError(f"{where}.background_intensity must be a number in "
                      f"(0, 1], got {intensity!r}.")
  if not isinstance(varies, (bool, np.bool_)):
    raise ConfigError(f"{where}.background_varies must be True or False, got "
                      f"{varies!r}.")
  if not _is_number(pan) or not math.isfinite(pan):
    raise ConfigError(f"{where}.background_pan must be a finite number (pixels "
                      f"per frame; 0 = fixed over the sequence), got {pan!r}.")


def canonical_fields(fields: dict) -> dict:
  """Canonical background entries of a recipe's JSON fields (edited in place).

  With ``background='black'`` the other background fields change nothing, and
  all are left out, so recipes from before backgrounds keep their cache key.

  Args:
    fields: field name -> value of a recipe.

  Returns:
    ``fields``, without the background entries or with plain Python values.
  """
  if fields.get("background", "black") == "black":
    for name in FIELDS:
      fields.pop(name, None)
    return fields
  for name in ("background_intensity", "background_pan"):
    if name in fields:
      fields[name] = float(fields[name])
  fields["background_varies"] = bool(fields["background_varies"])
  if fields["background"] == "texture" and not fields["background_varies"]:
    # 2: the held-out split shares the training crop (it used to crop the
    # held-out region); a new key, so that no cache of the old arrays is read.
    fields["background_version"] = 2
  return fields


def compose(digits, background) -> np.ndarray:
  """Draws digits over a background: ``digits + (1 - digits) * background``.

  Args:
    digits: float ``[...]`` digit canvas, clipped to ``[0, 1]``.
    background: float ``[...]`` (broadcastable) in ``[0, 1]``.

  Returns:
    float32 ``[...]`` in ``[0, 1]``; exactly ``digits`` on a zero background.
  """
  digits = np.asarray(digits, dtype=np.float32)
  return digits + (np.float32(1) - digits) * np.asarray(background, np.float32)


def _texture_images() -> List[np.ndarray]:
  """The texture photographs, float32 grayscale in ``[0, 1]``, downscaled by 2
  (loaded once)."""
  images = []
  for package, parts in TEXTURE_FILES:
    if parts[-1] not in _TEXTURES:
      spec = importlib.util.find_spec(package)
      roots = (spec.submodule_search_locations or []) if spec else []
      path = os.path.join(roots[0], *parts) if roots else None
      if path is None or not os.path.isfile(path):
        wheel = "scikit-learn" if package == "sklearn" else package
        raise DataError(
            f"background='texture' needs {parts[-1]} from the {package!r} "
            f"package, not found (pip install {wheel}).")
      from PIL import Image  # pylint: disable=import-outside-toplevel
      with Image.open(path) as image:
        gray = image.convert("L").reduce(2)
      _TEXTURES[parts[-1]] = np.asarray(gray, dtype=np.float32) / 255.0
    images.append(_TEXTURES[parts[-1]])
  return images


def _texture_crop(rng, height, width, split):
  """A random crop of the split's region of a texture photograph.

  Returns:
    (float32 ``[height, width]`` in ``[0, 1]`` before scaling, flipped at
    random; ``(image index, row, column, flipped)`` of the crop).
  """
  images = _texture_images()
  regions = []  # (image index, first column, end column)
  for i, image in enumerate(images):
    cut = int(image.shape[1] * TRAIN_FRACTION)
    lo, hi = (0, cut) if split == "train" else (cut, image.shape[1])
    if hi - lo >= width and image.shape[0] >= height:
      regions.append((i, lo, hi))
  if not regions:
    raise ConfigError(
        f"background='texture': a {height}x{width} field (canvas_size, "
        f"widened by background_pan over num_frames) fits in no {split} "
        f"texture region; lower canvas_size, background_pan or num_frames.")
  i, lo, hi = regions[rng.integers(len(regions))]
  y = int(rng.integers(0, images[i].shape[0] - height + 1))
  x = int(rng.integers(lo, hi - width + 1))
  flip = bool(rng.random() < 0.5)
  crop = images[i][y:y + height, x:x + width]
  return (crop[:, ::-1] if flip else crop), (i, y, x, flip)


def _field(level, height, width, canvas, rng, varies, intensity, split):
  """One background field, float32 ``[height, width]`` in ``[0, intensity]``."""
  if level == "black":
    return np.zeros((height, width), np.float32)
  if level == "grey":
    value = rng.uniform(0.2 * intensity, intensity) if varies else intensity
    return np.full((height, width), value, np.float32)
  if level == "noise":
    return (rng.random((height, width)) * intensity).astype(np.float32)
  if level == "grid":
    period = int(rng.integers(6, 13))
    phase_y, phase_x = rng.integers(0, period, size=2)
    rows = (np.arange(height) + phase_y) % period == 0
    cols = (np.arange(width) + phase_x) % period == 0
    lines = rows[:, None] | cols[None, :]
    return np.where(lines, np.float32(intensity), np.float32(0))
  if level == "smooth":
    y, x = np.mgrid[0:height, 0:width] / float(canvas)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    out = rng.uniform(0.2, 1.0) * (np.cos(angle) * x + np.sin(angle) * y)
    for _ in range(int(rng.integers(1, 4))):
      cy = rng.uniform(0.0, height / canvas)
      cx = rng.uniform(0.0, width / canvas)
      sigma = rng.uniform(0.2, 0.5)
      amplitude = rng.uniform(-1.0, 1.0)
      out = out + amplitude * np.exp(
          -((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * sigma ** 2))
  else:  # texture: the photograph's own contrast, not stretched (a flat
    # crop of sky would otherwise become amplified JPEG noise)
    # One background for the dataset: the held-out split shares the
    # training split's crop (both draw it from the same generator).
    out, _ = _texture_crop(rng, height, width, split if varies else "train")
    return (out * np.float32(intensity)).astype(np.float32)
  out = out - out.min()
  return (out / (out.max() + 1e-6) * intensity).astype(np.float32)


def _pan_frames(field, canvas, num_frames, pan):
  """Frames ``[T, C, C]`` of a window sliding ``pan`` pixels per frame over
  ``field`` (``[C, W]``), linearly interpolated."""
  steps = np.arange(num_frames, dtype=np.float64)
  offsets = pan * steps if pan > 0 else -pan * (num_frames - 1) + pan * steps
  first = np.floor(offsets).astype(np.int64)
  frac = (offsets - first).astype(np.float32)[:, None, None]
  cols = first[:, None] + np.arange(canvas)  # [T, C]
  left = np.moveaxis(field[:, cols], 1, 0)  # [T, C, C]
  right = np.moveaxis(field[:, cols + 1], 1, 0)
  return left * (np.float32(1) - frac) + right * frac


class _Stream:
  """Backgrounds of one dataset, drawn one after another (so the arrays do
  not depend on how many are taken at a time)."""

  def __init__(self, level, canvas_size, rng, varies, intensity, split,
               num_frames, pan):
    if num_frames is None and pan != 0:
      raise ConfigError("background_pan must be 0 for scenes (no frames).")
    self._args = (level, canvas_size, rng, varies, float(intensity), split)
    self._frames, self._pan = num_frames, float(pan)
    # 'black' draws nothing: its one zero background serves every image.
    self._fixed = None if varies and level != "black" else self._draw()

  def _draw(self):
    level, canvas, rng, varies, intensity, split = self._args
    frames, pan = self._frames, self._pan
    width = canvas + (math.ceil(abs(pan) * (frames - 1)) + 1 if pan else 0)
    field = _field(level, canvas, width, canvas, rng, varies, intensity, split)
    if frames is None:
      return field
    if not pan:
      return np.broadcast_to(field, (frames, canvas, canvas))
    return _pan_frames(field, canvas, frames, pan)

  def take(self, k: int) -> np.ndarray:
    """The next ``k`` backgrounds, float32 ``[k, C, C]`` or ``[k, T, C, C]``."""
    if self._fixed is not None:
      return np.broadcast_to(self._fixed, (k,) + self._fixed.shape)
    return np.stack([self._draw() for _ in range(k)]).astype(np.float32)


def generate(level: str, num: int, canvas_size: int, rng: np.random.Generator,
             *, varies: bool, intensity: float, split: str,
             num_frames: Optional[int] = None, pan: float = 0.0) -> np.ndarray:
  """Draws the backgrounds of ``num`` scenes or sequences.

  Args:
    level: one of :data:`LEVELS`.
    num: number of scenes or sequences, ``n``.
    canvas_size: side ``C`` of the canvas.
    rng: the generator (advanced here).
    varies: a background per image/sequence (``True``) or one for all.
    intensity: brightest value, in ``(0, 1]``.
    split: ``'train'`` or ``'test'`` (which texture regions to crop).
    num_frames: ``T`` for sequences; ``None`` for scenes.
    pan: sequences: pixels per frame the background slides (0: fixed).

  Returns:
    float32 ``[n, C, C]`` (scenes) or ``[n, T, C, C]`` (sequences) in
    ``[0, intensity]``.

  Raises:
    ConfigError: if a texture field does not fit the photographs' regions.
    DataError: if ``'texture'``'s photographs cannot be found.
  """
  stream = _Stream(level, canvas_size, rng, varies, intensity, split,
                   num_frames, pan)
  return np.array(stream.take(num), dtype=np.float32)


class Painter:
  """Composes a recipe's rendered digits over its backgrounds, chunk by chunk.

  ``Painter(recipe, num).paint(digits)`` takes the next ``len(digits)`` scenes
  or sequences; after the last chunk, :attr:`arrays` holds ``backgrounds``,
  uint8 ``[n, C, C]`` or ``[n, T, C, C]`` (``rint(background * 255)``), or
  nothing for ``'black'``, whose digits are returned unchanged.
  """

  def __init__(self, recipe, num: int):
    self.arrays: Dict[str, np.ndarray] = {}
    self._stream = None
    if recipe.background == "black":
      return
    self._stream = _Stream(
        recipe.background, recipe.canvas_size,
        np.random.default_rng([recipe.seed, SEED_TAG]),
        recipe.background_varies, recipe.background_intensity, recipe.split,
        getattr(recipe, "num_frames", None),
        getattr(recipe, "background_pan", 0.0))
    self.arrays = {k: np.empty(shape, dtype)
                   for k, (dtype, shape) in self.expected(recipe, num).items()}
    self._done = 0

  @staticmethod
  def expected(recipe, num: int):
    """The cache entry of ``backgrounds``: dtype and ``(n, [T,] C, C)``."""
    if recipe.background == "black":
      return {}
    frames = getattr(recipe, "num_frames", None)
    return {"backgrounds": (np.uint8, (num,) + ((frames,) if frames else ())
                            + (recipe.canvas_size,) * 2)}

  def paint(self, digits: np.ndarray) -> np.ndarray:
    """``compose`` of the next chunk of clipped digit canvases, float32
    ``[k, C, C]`` (or ``[k, T, C, C]``), over their backgrounds."""
    if self._stream is None:
      return digits
    k = digits.shape[0]
    background = self._stream.take(k)
    self.arrays["backgrounds"][self._done:self._done + k] = np.rint(
        background * np.float32(255)).astype(np.uint8)
    self._done += k
    return compose(digits, background)
