"""Deterministic moving multi-MNIST sequences with per-frame boxes and ids.

The data of the sequential model (APDR, published as SQAIR). A sequence is
``num_frames`` canvases of ``canvas_size x canvas_size`` pixels holding up to
``max_digits`` digits from a digit bank (see :mod:`apdr_jax.data.digits`). The
number of digits of a sequence is uniform over ``min_digits..max_digits``, and
they occupy the first slots of the per-sequence arrays: slot ``k`` is one and
the same digit (identity ``k``) in every frame of its sequence.

Motion. The top-left corner of each ``digit_size x digit_size`` patch is a float
position that starts uniformly inside ``[0, canvas_size - digit_size]^2``, so
the patch is fully inside the canvas. The initial velocity has a uniformly
random direction and a speed uniform in ``[speed_min, speed_max]`` pixels per
frame. Every frame the digit moves by its velocity and bounces off the canvas
edges (position and velocity are reflected, as often as needed, so the patch
stays fully inside); then Gaussian noise of standard deviation
``velocity_noise`` is added to each velocity component, and the speed is
clipped back into ``[speed_min, speed_max]``. So every step moves a digit by at
most ``speed_max`` pixels (its rendered position by at most ``speed_max +
sqrt(2)``, from rounding). Digits are rendered at the rounded (integer)
positions.

Entering and leaving (``enter_leave=True``). Each digit of a sequence is visible
in a contiguous interval of frames ``[t_start, t_end)`` of at least two frames:
with probability 1/2 it enters late (``t_start`` uniform over
``1..num_frames - 2``, else ``t_start = 0``), and with probability 1/2 it leaves
early (``t_end`` uniform over ``t_start + 2..num_frames - 1`` when that range is
not empty, else ``t_end = num_frames``). A digit keeps moving while it is not
visible; it is simply not drawn, and its presence is 0. Frames may then hold
fewer than ``min_digits`` digits (even none). With ``enter_leave=False`` every
digit of a sequence is visible in every frame. ``enter_leave_fraction`` below 1
mixes the two: each sequence independently follows the entering and leaving
rule with that probability, and shows every digit throughout otherwise (a
training mix in which forgetting and later discovery happen, while most
sequences look like the held-out ones).

Boxes are the tight ink boxes of :mod:`apdr_jax.data.scenes` (pixels greater
than ``INK_THRESHOLD`` times the digit's maximum), ``(x_min, y_min, x_max,
y_max)`` in pixel-edge coordinates, of the digit at its rendered position.

Train sequences (``split='train'``) use the train bank and test sequences the
disjoint test bank.

Digits may be drawn over a background, fixed or panning (``background``
fields, see :mod:`apdr_jax.data.backgrounds`); the digits, trajectories and
boxes of a recipe do not depend on it.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from apdr_jax.data import backgrounds as backgrounds_lib
from apdr_jax.data import cache as cache_lib
from apdr_jax.data import scenes as scenes_lib
from apdr_jax.data.recipes import SequenceRecipe

__all__ = [
    "SEQUENCE_FORMAT_VERSION",
    "SequenceRecipe",
    "generate_sequences",
    "load_sequences",
    "sequence_cache_path",
]

#: Version of the sequence generator and cache format; part of every cache key.
#: Bump it whenever :func:`generate_sequences` would produce different arrays.
#: 2: the same arrays, stored uncompressed (memory-mappable).
SEQUENCE_FORMAT_VERSION = 2

_RENDER_CHUNK_FRAMES = 2048
# Private helpers of the same package, shared rather than copied.
# pylint: disable=protected-access
_check_bank = scenes_lib._check_bank
_ink_boxes = scenes_lib._ink_boxes
_recipe_bank = scenes_lib._recipe_bank
_render = scenes_lib._render
# pylint: enable=protected-access


def _fold(positions: np.ndarray, velocities: np.ndarray, limit: int):
  """Reflects positions into ``[0, limit]`` off both walls, as often as needed.

  Args:
    positions: float ``[...]`` unconstrained positions.
    velocities: float ``[...]`` velocities that led there.
    limit: the largest allowed position, ``>= 0``.

  Returns:
    (positions in ``[0, limit]``, velocities with their sign flipped where an
    odd number of reflections happened), both ``[...]``.
  """
  if limit == 0:
    return np.zeros_like(positions), velocities
  period = 2.0 * limit
  phase = np.mod(positions, period)  # in [0, 2 limit)
  folded = limit - np.abs(phase - limit)
  sign = np.where(phase < limit, 1.0, -1.0)
  return np.clip(folded, 0.0, limit), velocities * sign


def _clip_speed(velocities: np.ndarray, speed_min: float,
                speed_max: float) -> np.ndarray:
  """Rescales velocities so that their norm lies in ``[speed_min, speed_max]``.

  Args:
    velocities: float ``[..., 2]``.
    speed_min: smallest allowed norm.
    speed_max: largest allowed norm.

  Returns:
    float ``[..., 2]`` with the same directions; zero vectors stay zero.
  """
  norm = np.linalg.norm(velocities, axis=-1, keepdims=True)
  target = np.clip(norm, speed_min, speed_max)
  scale = np.divide(target, norm, out=np.ones_like(norm), where=norm > 0)
  return velocities * scale


def _trajectories(recipe: SequenceRecipe,
                  rng: np.random.Generator) -> np.ndarray:
  """Draws bouncing trajectories of every slot of every sequence.

  Args:
    recipe: a validated recipe.
    rng: the generator (advanced here).

  Returns:
    int64 ``[n, T, N, 2]`` rendered top-left corners ``(x, y)`` in
    ``0..canvas_size - digit_size``.
  """
  n, frames, slots = recipe.num_sequences, recipe.num_frames, recipe.max_digits
  limit = recipe.canvas_size - recipe.digit_size
  position = rng.uniform(0.0, float(limit), size=(n, slots, 2))
  angle = rng.uniform(0.0, 2.0 * np.pi, size=(n, slots))
  speed = rng.uniform(float(recipe.speed_min), float(recipe.speed_max),
                      size=(n, slots))
  direction = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
  velocity = speed[..., None] * direction
  noise = rng.standard_normal(size=(frames - 1, n, slots, 2))
  noise *= float(recipe.velocity_noise)

  positions = np.empty((n, frames, slots, 2), dtype=np.float64)
  positions[:, 0] = position
  for t in range(1, frames):
    position, velocity = _fold(position + velocity, velocity, limit)
    positions[:, t] = position
    velocity = _clip_speed(velocity + noise[t - 1], float(recipe.speed_min),
                           float(recipe.speed_max))
  return np.clip(np.rint(positions), 0, limit).astype(np.int64)


def _intervals(recipe: SequenceRecipe, rng: np.random.Generator):
  """Draws the visibility interval ``[t_start, t_end)`` of every slot.

  Args:
    recipe: a validated recipe.
    rng: the generator (advanced here only when ``recipe.enter_leave``).

  Returns:
    (t_start, t_end), int64 ``[n, N]`` each, with ``t_end - t_start >= 2``
    whenever ``num_frames >= 2``.
  """
  n, frames, slots = recipe.num_sequences, recipe.num_frames, recipe.max_digits
  if not recipe.enter_leave:
    return (np.zeros((n, slots), dtype=np.int64),
            np.full((n, slots), frames, dtype=np.int64))
  enters = rng.random((n, slots)) < 0.5
  leaves = rng.random((n, slots)) < 0.5
  late_start = rng.integers(1, frames - 1, size=(n, slots))  # 1..T-2
  end_draw = rng.random((n, slots))
  t_start = np.where(enters, late_start, 0)
  room = frames - 1 - (t_start + 2) + 1  # number of ends in t_start+2..T-1
  offset = np.floor(end_draw * np.maximum(room, 1)).astype(np.int64)
  early_end = t_start + 2 + offset
  t_end = np.where(leaves & (room > 0), early_end, frames)
  if recipe.enter_leave_fraction < 1.0:
    # Drawn last, so that a fraction of 1 leaves every other draw as it was.
    mixed = rng.random(n) < float(recipe.enter_leave_fraction)  # [n]
    t_start = np.where(mixed[:, None], t_start, 0)
    t_end = np.where(mixed[:, None], t_end, frames)
  return t_start.astype(np.int64), t_end.astype(np.int64)


def generate_sequences(
    recipe: SequenceRecipe,
    bank_images: np.ndarray,
    bank_labels: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
  """Composes moving multi-digit sequences from a digit bank, deterministically.

  See the module docstring for the motion and the entering/leaving rules. Each
  digit of a sequence is a uniformly random bank image (with replacement).
  Overlaps are combined by ``recipe.overlap``. The result depends only on the
  recipe (through ``recipe.seed``) and the bank; the trajectories of a recipe do
  not depend on ``enter_leave`` (only the presence does).

  Args:
    recipe: the sequence recipe (validated here).
    bank_images: float ``[M, digit_size, digit_size]`` in ``[0, 1]``, no blank
      image.
    bank_labels: optional integer ``[M]`` labels; when ``None``, ``labels`` is
      -1 everywhere (unknown).

  Returns:
    A dict with, for ``n = num_sequences``, ``T = num_frames``,
    ``N = max_digits``, ``C = canvas_size``:

    * ``images``: uint8 ``[n, T, C, C]`` in ``0..255``;
    * ``presence``: uint8 ``[n, T, N]``, 1 where digit ``k`` is visible in
      frame ``t``;
    * ``boxes``: float32 ``[n, T, N, 4]`` ink boxes ``(x_min, y_min, x_max,
      y_max)`` in canvas pixel-edge coordinates; zero rows where absent;
    * ``ids``: int32 ``[n, T, N]`` object identity (``k`` for slot ``k``), -1
      where absent;
    * ``counts``: int32 ``[n, T]``, visible digits per frame
      (``presence.sum(-1)``);
    * ``labels``: int32 ``[n, N]`` digit labels, -1 for slots not used by the
      sequence;
    * ``indices``: int32 ``[n, N]`` bank index of each digit, -1 for slots not
      used by the sequence;
    * ``backgrounds``: uint8 ``[n, T, C, C]``, only when ``background`` is not
      ``'black'`` (``images`` are the digits drawn over it).

  Raises:
    ConfigError: if the recipe is invalid.
    DataError: if the bank has the wrong shape, dtype or range.
  """
  recipe.validate()
  bank, labels_bank = _check_bank(recipe, bank_images, bank_labels)
  n, frames, slots = recipe.num_sequences, recipe.num_frames, recipe.max_digits
  canvas = recipe.canvas_size
  rng = np.random.default_rng(recipe.seed)

  num_digits = rng.integers(recipe.min_digits, recipe.max_digits + 1, size=n)
  indices = rng.integers(0, bank.shape[0], size=(n, slots))
  used = np.arange(slots)[None, :] < num_digits[:, None]  # [n, N]
  corners = _trajectories(recipe, rng)  # [n, T, N, 2]
  t_start, t_end = _intervals(recipe, rng)  # [n, N]
  steps = np.arange(frames)[None, :, None]
  present = (used[:, None, :] & (steps >= t_start[:, None, :])
             & (steps < t_end[:, None, :]))  # [n, T, N]

  patch_boxes = _ink_boxes(bank)[indices]  # [n, N, 4]
  boxes = np.where(
      present[..., None],
      patch_boxes[:, None] + np.tile(corners, 2).astype(np.float32),
      np.float32(0)).astype(np.float32)

  images = np.empty((n, frames, canvas, canvas), dtype=np.uint8)
  # Frames rendered as scenes: frame t of sequence i is scene i * T + t.
  frame_indices = np.repeat(indices, frames, axis=0)  # [n * T, N]
  flat_present = present.reshape(n * frames, slots)
  flat_corners = corners.reshape(n * frames, slots, 2)
  combine = "max" if recipe.overlap == "max" else "sum"
  painter = backgrounds_lib.Painter(recipe, n)
  per_chunk = max(1, _RENDER_CHUNK_FRAMES // frames)
  for start in range(0, n, per_chunk):
    stop = min(start + per_chunk, n)
    chunk = _render(bank, frame_indices, flat_present, flat_corners,
                    np.arange(start * frames, stop * frames), canvas, combine)
    np.clip(chunk, 0.0, 1.0, out=chunk)
    chunk = painter.paint(chunk.reshape(stop - start, frames, canvas, canvas))
    images[start:stop] = np.rint(chunk * 255.0).astype(np.uint8)

  if labels_bank is None:
    labels = np.full((n, slots), -1, dtype=np.int32)
  else:
    labels = np.where(used, labels_bank[indices], -1).astype(np.int32)
  ids = np.where(present, np.arange(slots, dtype=np.int32), -1).astype(np.int32)
  return {
      "images": images,
      "presence": present.astype(np.uint8),
      "boxes": boxes,
      "ids": ids,
      "counts": present.sum(axis=-1).astype(np.int32),
      "labels": labels,
      "indices": np.where(used, indices, -1).astype(np.int32),
      **painter.arrays,
  }


def sequence_cache_path(recipe: SequenceRecipe,
                        cache_dir: Optional[str] = None) -> str:
  """Path of the cache file of a sequence recipe.

  The file name carries the sha1 of the recipe's canonical JSON together with
  :data:`SEQUENCE_FORMAT_VERSION` (see :func:`apdr_jax.data.cache.cache_path`),
  so any change to the recipe or the generator gives another file.

  Args:
    recipe: the sequence recipe.
    cache_dir: directory; ``None`` means ``cache.default_cache_dir()``
      (``$APDR_JAX_CACHE`` or ``~/.cache/apdr_jax``).

  Returns:
    ``<cache_dir>/sequences-<source>-<split>-<sha1>.npz``.
  """
  return cache_lib.cache_path(f"sequences-{recipe.source}-{recipe.split}",
                              recipe.to_json(), SEQUENCE_FORMAT_VERSION,
                              cache_dir)


def _expected_arrays(recipe: SequenceRecipe):
  n, frames, slots = recipe.num_sequences, recipe.num_frames, recipe.max_digits
  canvas = recipe.canvas_size
  return {
      "images": (np.uint8, (n, frames, canvas, canvas)),
      "presence": (np.uint8, (n, frames, slots)),
      "boxes": (np.float32, (n, frames, slots, 4)),
      "ids": (np.int32, (n, frames, slots)),
      "counts": (np.int32, (n, frames)),
      "labels": (np.int32, (n, slots)),
      "indices": (np.int32, (n, slots)),
      **backgrounds_lib.Painter.expected(recipe, n),
  }


def load_sequences(recipe: SequenceRecipe,
                   cache_dir: Optional[str] = None,
                   mmap: bool = False) -> Dict[str, np.ndarray]:
  """Loads the sequences of a recipe from the cache, generating them if needed.
    mmap: return the arrays as read-only memory maps of the cache file, so
      that only the rows a caller indexes are read from disk (each process of
      a multi-host run reads only its shard).

  Works as :func:`apdr_jax.data.scenes.load_scenes` does for scenes: the
  recipe is validated, then the arrays are read from
  :func:`sequence_cache_path` ``(recipe, cache_dir)``, or generated with
  :func:`generate_sequences` from the digit bank of ``recipe.source`` and
  ``recipe.split`` and written atomically. A bad cache file is regenerated and
  an unwritable one skipped, each with a ``RuntimeWarning`` (see
  :func:`apdr_jax.data.cache.load_or_generate`).

  Args:
    recipe: the sequence recipe.
    cache_dir: cache directory, or ``None`` for ``$APDR_JAX_CACHE`` (when set)
      or else ``~/.cache/apdr_jax``.

  Returns:
    The dict of :func:`generate_sequences`: ``images`` uint8 ``[n, T, C, C]``,
    ``presence`` uint8 ``[n, T, N]``, ``boxes`` float32 ``[n, T, N, 4]``,
    ``ids`` int32 ``[n, T, N]``, ``counts`` int32 ``[n, T]``, ``labels`` int32
    ``[n, N]``, ``indices`` int32 ``[n, N]``.

  Raises:
    ConfigError: if the recipe is invalid.
    DataError: if the digit bank cannot be loaded.
  """
  recipe.validate()
  return cache_lib.load_or_generate(
      sequence_cache_path(recipe, cache_dir), recipe.to_json(),
      SEQUENCE_FORMAT_VERSION, _expected_arrays(recipe),
      lambda: generate_sequences(recipe, *_recipe_bank(recipe)),
      what="sequence", mmap=mmap)
