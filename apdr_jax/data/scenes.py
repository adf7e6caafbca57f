"""Deterministic static multi-MNIST scenes with ground-truth counts and boxes.

A scene is a ``canvas_size x canvas_size`` image holding between
``min_digits`` and ``max_digits`` digits drawn from a digit bank (see
:mod:`apdr_jax.data.digits`), each pasted at a uniformly random integer
position such that the whole ``digit_size x digit_size`` patch lies inside the
canvas. The number of digits is uniform over ``min_digits..max_digits``.
Present digits always occupy the first ``count`` slots of the per-scene arrays.

Train scenes (``split='train'``) draw digits from the train bank and test
scenes from the disjoint test bank, so test scenes use digits a model never
saw.

Boxes are the tight *ink* boxes of each placed digit: the pixels of the digit
patch whose value is greater than ``INK_THRESHOLD`` times the patch maximum.
They are ``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates: pixel
column ``c`` spans ``[c, c + 1)``, so a box covers the columns
``x_min <= c < x_max`` and the rows ``y_min <= r < y_max`` (``x_max - x_min``
is the width in pixels). Faint pixels of a digit (at most ``INK_THRESHOLD`` of
its maximum) may lie outside its box.

Digits may be drawn over a background (``background`` fields, see
:mod:`apdr_jax.data.backgrounds`); the digits, positions and boxes of a recipe
do not depend on it. Generated scenes are cached on disk by
:mod:`apdr_jax.data.cache`.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from apdr_jax.data import backgrounds as backgrounds_lib
from apdr_jax.data import cache as cache_lib
from apdr_jax.data import digits as digits_lib
from apdr_jax.data.cache import CACHE_ENV_VAR, default_cache_dir
from apdr_jax.data.recipes import OVERLAP_RULES, SCENE_OVERLAP_RULES, SceneRecipe
from apdr_jax.errors import ConfigError, DataError

__all__ = [
    "CACHE_ENV_VAR",
    "FORMAT_VERSION",
    "INK_THRESHOLD",
    "OVERLAP_RULES",
    "SCENE_OVERLAP_RULES",
    "SceneRecipe",
    "default_cache_dir",
    "generate_scenes",
    "load_scenes",
    "pairwise_iou",
    "scene_cache_path",
    "to_float",
]

#: Version of the generator and cache format; part of every cache key. Bump
#: it whenever :func:`generate_scenes` would produce different arrays for a
#: recipe. 2: the same arrays, stored uncompressed (memory-mappable).
FORMAT_VERSION = 2
#: A pixel is ink when it is greater than this fraction of its digit's maximum.
INK_THRESHOLD = 0.1

_MAX_PLACEMENT_TRIES = 1000
_RENDER_CHUNK = 2048


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
  """Intersection over union of every pair of boxes within each scene.

  Args:
    boxes: ``[..., N, 4]`` boxes ``(x_min, y_min, x_max, y_max)``.

  Returns:
    float64 ``[..., N, N]`` IoU; 0 where the union is empty (e.g. zero rows).
  """
  boxes = np.asarray(boxes, dtype=np.float64)
  x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
  ix = np.minimum(x1[..., :, None], x1[..., None, :]) - np.maximum(
      x0[..., :, None], x0[..., None, :])
  iy = np.minimum(y1[..., :, None], y1[..., None, :]) - np.maximum(
      y0[..., :, None], y0[..., None, :])
  inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
  area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = area[..., :, None] + area[..., None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _ink_boxes(bank: np.ndarray) -> np.ndarray:
  """Tight ink boxes of bank images in patch coordinates.

  Args:
    bank: float32 ``[M, d, d]``.

  Returns:
    float32 ``[M, 4]`` boxes ``(x_min, y_min, x_max, y_max)``, pixel edges.
  """
  peak = bank.max(axis=(1, 2))
  ink = bank > (INK_THRESHOLD * peak)[:, None, None]
  rows = ink.any(axis=2)  # [M, d]
  cols = ink.any(axis=1)  # [M, d]
  size = bank.shape[1]
  y0 = rows.argmax(axis=1)
  y1 = size - rows[:, ::-1].argmax(axis=1)
  x0 = cols.argmax(axis=1)
  x1 = size - cols[:, ::-1].argmax(axis=1)
  return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def _check_bank(recipe: SceneRecipe, bank_images, bank_labels):
  images = np.asarray(bank_images)
  if (images.ndim != 3
      or images.shape[1:] != (recipe.digit_size, recipe.digit_size)):
    raise DataError(
        f"Digit bank images must have shape [num, {recipe.digit_size}, "
        f"{recipe.digit_size}] (recipe.digit_size), got {images.shape}."
    )
  if images.shape[0] < 1:
    raise DataError("The digit bank is empty.")
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(
        f"Digit bank images must be floating point in [0, 1], got dtype "
        f"{images.dtype}."
    )
  images = images.astype(np.float32, copy=False)
  if (not np.all(np.isfinite(images)) or images.min() < 0.0
      or images.max() > 1.0):
    raise DataError("Digit bank images must be finite and in [0, 1].")
  blank = np.flatnonzero(images.max(axis=(1, 2)) <= 0.0)
  if blank.size:
    raise DataError(
        f"Digit bank has {blank.size} blank image(s) (no ink), e.g. index "
        f"{blank[0]}; remove them."
    )
  labels = None
  if bank_labels is not None:
    labels = np.asarray(bank_labels)
    if (labels.shape != images.shape[:1]
        or not np.issubdtype(labels.dtype, np.integer)):
      raise DataError(
          f"Digit bank labels must be integers of shape {images.shape[:1]}, "
          f"got {labels.dtype} {labels.shape}."
      )
    labels = labels.astype(np.int32)
  return images, labels


def _recipe_bank(recipe):
  """The digit bank ``(images, labels)`` of a scene or sequence recipe."""
  return digits_lib.load_bank(
      recipe.source, recipe.split, sprite_size=recipe.digit_size)


def generate_scenes(
    recipe: SceneRecipe,
    bank_images: np.ndarray,
    bank_labels: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
  """Composes static multi-digit scenes from a digit bank, deterministically.

  For each scene: the count is uniform over ``min_digits..max_digits``; each
  present digit is a uniformly random bank image (with replacement) pasted with
  its top-left corner at uniformly random integer coordinates in
  ``0..canvas_size - digit_size``. If ``recipe.max_iou < 1`` the positions of a
  scene are redrawn (rejection sampling) until every pair of its ink boxes has
  IoU ``<= max_iou``. Overlaps are combined by ``recipe.overlap``; with
  ``'none'`` the positions are also redrawn until no pixel's summed intensity
  exceeds 1. The result depends only on the recipe (through ``recipe.seed``)
  and the bank.

  Args:
    recipe: the scene recipe (validated here).
    bank_images: float ``[M, digit_size, digit_size]`` in ``[0, 1]``, no blank
      image.
    bank_labels: optional integer ``[M]`` labels; when ``None``, ``labels`` is
      -1 everywhere (unknown), and presence must be read from ``counts``.

  Returns:
    A dict with, for ``n = num_scenes``, ``N = max_digits``,
    ``C = canvas_size``:

    * ``images``: uint8 ``[n, C, C]`` in ``0..255``;
    * ``counts``: int32 ``[n]``, the number of digits (slots ``0..count-1``
      are present);
    * ``boxes``: float32 ``[n, N, 4]`` ink boxes ``(x_min, y_min, x_max,
      y_max)`` in canvas pixel-edge coordinates; zero rows for absent slots;
    * ``labels``: int32 ``[n, N]`` digit labels, -1 for absent slots;
    * ``indices``: int32 ``[n, N]`` bank index of each digit, -1 for absent;
    * ``backgrounds``: uint8 ``[n, C, C]``, only when ``background`` is not
      ``'black'`` (``images`` are the digits drawn over it).

  Raises:
    ConfigError: if the recipe is invalid, or ``max_iou`` or ``overlap='none'``
      cannot be met within a bounded number of placement tries.
    DataError: if the bank has the wrong shape, dtype or range.
  """
  recipe.validate()
  bank, labels_bank = _check_bank(recipe, bank_images, bank_labels)
  n, slots = recipe.num_scenes, recipe.max_digits
  canvas, size = recipe.canvas_size, recipe.digit_size
  rng = np.random.default_rng(recipe.seed)

  counts = rng.integers(recipe.min_digits, recipe.max_digits + 1, size=n)
  indices = rng.integers(0, bank.shape[0], size=(n, slots))
  present = np.arange(slots)[None, :] < counts[:, None]  # [n, N]
  span = canvas - size + 1
  corners = rng.integers(0, span, size=(n, slots, 2))  # (x, y) top-left

  patch_boxes = _ink_boxes(bank)[indices]  # [n, N, 4]

  boxes = _digit_boxes(patch_boxes, corners, present)

  if float(recipe.max_iou) < 1.0 and slots > 1:
    pair_mask = ((present[:, :, None] & present[:, None, :])
                 & ~np.eye(slots, dtype=bool))

    def violating(box, mask):
      iou = np.where(mask, pairwise_iou(box), 0.0)
      return np.flatnonzero(
          iou.max(axis=(1, 2)) > float(recipe.max_iou) + 1e-9)

    bad = violating(boxes, pair_mask)
    tries = 0
    while bad.size:
      if tries >= _MAX_PLACEMENT_TRIES:
        raise ConfigError(
            f"SceneRecipe.max_iou={recipe.max_iou}: could not place the "
            f"digits of {bad.size} scene(s) with pairwise ink-box IoU <= "
            f"max_iou after {_MAX_PLACEMENT_TRIES} tries; raise max_iou or "
            f"canvas_size, or lower max_digits."
        )
      tries += 1
      corners[bad] = rng.integers(0, span, size=(bad.size, slots, 2))
      boxes[bad] = _digit_boxes(patch_boxes[bad], corners[bad], present[bad])
      bad = bad[violating(boxes[bad], pair_mask[bad])]

  if recipe.overlap == "none" and slots > 1:
    _redraw_crossing_strokes(recipe, rng, bank, indices, present, corners,
                             boxes, patch_boxes)

  images = np.empty((n, canvas, canvas), dtype=np.uint8)
  combine = "max" if recipe.overlap == "max" else "sum"
  painter = backgrounds_lib.Painter(recipe, n)
  for start in range(0, n, _RENDER_CHUNK):
    rows = np.arange(start, min(start + _RENDER_CHUNK, n))
    chunk = _render(bank, indices, present, corners, rows, canvas, combine)
    np.clip(chunk, 0.0, 1.0, out=chunk)
    chunk = painter.paint(chunk.reshape(rows.size, canvas, canvas))
    images[rows] = np.rint(chunk * 255.0).astype(np.uint8)

  if labels_bank is None:
    labels = np.full((n, slots), -1, dtype=np.int32)
  else:
    labels = np.where(present, labels_bank[indices], -1).astype(np.int32)
  return {
      "images": images,
      "counts": counts.astype(np.int32),
      "boxes": boxes,
      "labels": labels,
      "indices": np.where(present, indices, -1).astype(np.int32),
      **painter.arrays,
  }


def _digit_boxes(patch_boxes, corners, present):
  """Ink boxes `[..., N, 4]` on the canvas of patches placed at `corners`
  (`[..., N, 2]`, top-left `(x, y)`); zero rows for absent slots."""
  return np.where(present[..., None],
                  patch_boxes + np.tile(corners, 2).astype(np.float32),
                  np.float32(0)).astype(np.float32)


def _render(bank, indices, present, corners, scenes, canvas, combine):
  """Float canvases ``[len(scenes), canvas * canvas]`` of the given scenes,
  their digits summed (``combine='sum'``, not clipped) or maxed."""
  size = bank.shape[-1]
  offsets = np.arange(size)
  out = np.zeros((scenes.size, canvas * canvas), dtype=np.float32)
  for slot in range(present.shape[1]):
    rows = np.flatnonzero(present[scenes, slot])
    if rows.size == 0:
      continue
    scene = scenes[rows]
    patches = bank[indices[scene, slot]]  # [k, d, d]
    x = corners[scene, slot, 0]
    y = corners[scene, slot, 1]
    flat = ((y[:, None, None] + offsets[None, :, None]) * canvas
            + (x[:, None, None] + offsets[None, None, :]))  # [k, d, d]
    where = (rows[:, None, None], flat)
    if combine == "sum":
      out[where] += patches
    else:
      out[where] = np.maximum(out[where], patches)
  return out


def _redraw_crossing_strokes(recipe, rng, bank, indices, present, corners,
                             boxes, patch_boxes):
  """Redraws, in place, the positions (`corners`, `boxes`) of every scene in
  which two digits' summed intensity exceeds 1 somewhere, until none does."""
  canvas, span = recipe.canvas_size, recipe.canvas_size - bank.shape[-1] + 1
  # MNIST values are multiples of 1/255, so a crossing sums to at least
  # 256/255; half a level of slack keeps float32 rounding of a sum of
  # exactly 1 from counting as one.
  tolerance = 0.5 / 255.0

  def crossing(scenes):
    sums = np.concatenate([
        _render(bank, indices, present, corners, scenes[i:i + _RENDER_CHUNK],
                canvas, "sum").max(axis=1)
        for i in range(0, scenes.size, _RENDER_CHUNK)])
    return scenes[sums > 1.0 + tolerance]

  bad = crossing(np.flatnonzero(present.sum(axis=1) > 1))
  for _ in range(_MAX_PLACEMENT_TRIES):
    if not bad.size:
      return
    corners[bad] = rng.integers(0, span, size=(bad.size,) + corners.shape[1:])
    boxes[bad] = _digit_boxes(patch_boxes[bad], corners[bad], present[bad])
    bad = crossing(bad)
  if bad.size:
    raise ConfigError(
        f"SceneRecipe.overlap='none': could not place the digits of "
        f"{bad.size} scene(s) without crossing strokes after "
        f"{_MAX_PLACEMENT_TRIES} tries; raise canvas_size or lower "
        f"max_digits.")


def scene_cache_path(recipe: SceneRecipe,
                     cache_dir: Optional[str] = None) -> str:
  """Path of the cache file of a scene recipe.

  Args:
    recipe: the scene recipe.
    cache_dir: directory; ``None`` means :func:`default_cache_dir`.

  Returns:
    ``<cache_dir>/scenes-<source>-<split>-<sha1>.npz``, keyed by the sha1 of
    the recipe's canonical JSON with :data:`FORMAT_VERSION` (see
    :func:`apdr_jax.data.cache.cache_path`).
  """
  return cache_lib.cache_path(f"scenes-{recipe.source}-{recipe.split}",
                              recipe.to_json(), FORMAT_VERSION, cache_dir)


def _expected_arrays(recipe: SceneRecipe):
  n, slots, canvas = recipe.num_scenes, recipe.max_digits, recipe.canvas_size
  return {
      "images": (np.uint8, (n, canvas, canvas)),
      "counts": (np.int32, (n,)),
      "boxes": (np.float32, (n, slots, 4)),
      "labels": (np.int32, (n, slots)),
      "indices": (np.int32, (n, slots)),
      **backgrounds_lib.Painter.expected(recipe, n),
  }


def load_scenes(recipe: SceneRecipe,
                cache_dir: Optional[str] = None,
                mmap: bool = False) -> Dict[str, np.ndarray]:
  """Loads the scenes of a recipe from the cache, generating them if needed.
    mmap: return the arrays as read-only memory maps of the cache file, so
      that only the rows a caller indexes are read from disk (each process of
      a multi-host run reads only its shard).

  The recipe is validated first. The cache file is
  :func:`scene_cache_path` ``(recipe, cache_dir)``. When it is missing, the
  digit bank ``digits.load_bank(recipe.source, recipe.split)`` is loaded (the
  train and test banks are disjoint), the scenes are generated with
  :func:`generate_scenes` and written atomically. A cache file that cannot be
  read or does not match the recipe is regenerated, and one that cannot be
  written is skipped, each with a ``RuntimeWarning`` (see
  :func:`apdr_jax.data.cache.load_or_generate`).

  Args:
    recipe: the scene recipe.
    cache_dir: cache directory; ``None`` means ``$APDR_JAX_CACHE`` or
      ``~/.cache/apdr_jax``.

  Returns:
    The dict of :func:`generate_scenes`: ``images`` uint8 ``[n, C, C]``,
    ``counts`` int32 ``[n]``, ``boxes`` float32 ``[n, N, 4]``, ``labels`` int32
    ``[n, N]``, ``indices`` int32 ``[n, N]``.

  Raises:
    ConfigError: if the recipe is invalid, or its ``max_iou`` cannot be met
      when the scenes are generated (see :func:`generate_scenes`).
    DataError: if the digit bank cannot be loaded.
  """
  recipe.validate()
  return cache_lib.load_or_generate(
      scene_cache_path(recipe, cache_dir), recipe.to_json(), FORMAT_VERSION,
      _expected_arrays(recipe),
      lambda: generate_scenes(recipe, *_recipe_bank(recipe)), what="scene",
      mmap=mmap)


def to_float(images) -> np.ndarray:
  """Converts uint8 images to float32 in ``[0, 1]``.

  Args:
    images: uint8 array of any shape, e.g. ``[n, C, C]``.

  Returns:
    float32 array of the same shape, ``images / 255``.

  Raises:
    DataError: if ``images`` is not uint8.
  """
  dtype = getattr(images, "dtype", None)
  if dtype is None or np.dtype(dtype) != np.uint8:
    raise DataError(f"to_float expects uint8 images, got dtype {dtype}.")
  return np.asarray(images, dtype=np.float32) / np.float32(255.0)
