"""What a run config (`configs/*.py`) means: its checks and derived values.

`validate_config` names the first bad value before anything is built;
`model_config` turns the `model`/`apdr` fields into the frozen architecture
dataclasses; the rest are schedules (presence prior, curriculum) and sizes.
"""

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import relaxed
from apdr_jax.errors import ConfigError

ESTIMATORS = ("nvil", "vimco", "rws", "concrete", "rebar", "relax")
OBJECTIVES = ("iwae", "fivo")
MODELS = ("air", "apdr")
DATA_KINDS = ("scenes", "sequences")
LR_SCHEDULES = ("constant", "cosine")


def model_config(config: ml_collections.ConfigDict):
  """The model's config: `AIRConfig`, or `APDRConfig` when model_name='apdr'.

  The canvas size comes from the data; APDR's discovery is AIR with the
  relation state as its context.
  """
  # relax_control follows the estimator, not the user.
  fields = {f.name for f in dataclasses.fields(air.AIRConfig)} - {
      "relax_control"}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ConfigError(f"unknown config.model fields: {sorted(unknown)}; "
                      f"known: {sorted(fields)}")
  model = config.model.to_dict()
  if config.model_name != "apdr":
    return air.AIRConfig(canvas_size=config.data.canvas_size,
                         relax_control=config.get("estimator") == "relax",
                         **model)
  extra = config.get("apdr", ml_collections.ConfigDict()).to_dict()
  known = {f.name for f in dataclasses.fields(apdr.APDRConfig)} - {"air"}
  if set(extra) - known:
    raise ConfigError(f"unknown config.apdr fields: {sorted(set(extra) - known)}"
                      f"; known: {sorted(known)}")
  relation = extra.get("relation_size", apdr.APDRConfig.relation_size)
  model["context_dim"] = relation
  try:
    return apdr.APDRConfig(
        air=air.AIRConfig(canvas_size=config.data.canvas_size, **model),
        **extra)
  except ValueError as e:  # APDRConfig's own checks name the field
    raise ConfigError(f"config.apdr: {e}") from e


def is_sequential(config) -> bool:
  return config.model_name == "apdr"


def num_frames_at(config, step):
  """Frames per training sequence at `step` (the curriculum on length).

  Starts at `curriculum_start_frames` and adds one frame every
  `curriculum_steps_per_frame` steps, up to the data's `num_frames`; 0 for
  static scenes. From step `curriculum_max_frames_from` on, it is at most
  `curriculum_max_frames` (when positive): a cap from the start, or a last
  stage on shorter sequences. Evaluation always reads every frame.

  Args:
    config: run config.
    step: a Python int, or a traced int32 scalar inside the update step
      (the stage is then a value, not a shape: one compile per run).

  Returns:
    An int for an int `step`, else an int32 scalar.
  """
  if config.data.kind != "sequences":
    return 0
  traced = isinstance(step, jax.Array)
  minimum = jnp.minimum if traced else min
  total = config.data.num_frames
  start = config.get("curriculum_start_frames", 0)
  every = config.get("curriculum_steps_per_frame", 0)
  if start > 0 and every > 0:
    total = minimum(total, start + step // every)
  cap = config.get("curriculum_max_frames", 0)
  if cap > 0:
    after = step >= config.get("curriculum_max_frames_from", 0)
    capped = minimum(total, cap)
    total = jnp.where(after, capped, total) if traced else (
        capped if after else total)
  return jnp.asarray(total, jnp.int32) if traced else int(total)


def num_terms(config) -> int:
  """Columns of the log-weight terms (the NVIL statistics' length)."""
  if is_sequential(config):
    return config.data.num_frames * (2 * config.model.num_slots + 1)
  return config.model.num_slots + 1


_MISSING = object()

# The fields outside `model` and `apdr` (those two follow `air.AIRConfig` and
# `apdr.APDRConfig`): path, type and smallest allowed value (None: any; the
# ranges of most floats are checked in `validate_config`).
_FIELDS = (
    ("model_name", str, None), ("seed", int, None), ("num_devices", int, 0),
    ("data.kind", str, None), ("data.source", str, None),
    ("data.canvas_size", int, 1), ("data.min_digits", int, 0),
    ("data.max_digits", int, 0), ("data.num_train_scenes", int, 1),
    ("data.num_test_scenes", int, 1), ("data.overlap", str, None),
    ("data.max_iou", float, None), ("data.seed", int, 0),
    ("data.cache_dir", str, None), ("data.num_frames", int, None),
    ("data.speed_min", float, None), ("data.speed_max", float, None),
    ("data.velocity_noise", float, None), ("data.enter_leave", bool, None),
    ("data.train_enter_leave_fraction", float, None),
    ("data.background", str, None), ("data.background_varies", bool, None),
    ("data.background_intensity", float, None),
    ("data.background_pan", float, None),
    ("curriculum_start_frames", int, None),
    ("curriculum_steps_per_frame", int, None),
    ("curriculum_max_frames", int, None),
    ("curriculum_max_frames_from", int, None),
    ("survival_warmup_steps", int, 0), ("init_air_from", str, None),
    ("presence_warmup_steps", int, 0),
    ("presence_warmup_floor", float, None),
    ("background_warmup_steps", int, 0),
    ("rho_start", float, None), ("rho_end", float, None),
    ("rho_anneal_steps", int, 0), ("estimator", str, None),
    ("concrete_temperature", float, None),
    ("concrete_temperature_end", float, None),
    ("concrete_anneal_steps", int, 0),
    ("rebar_temperature", float, None), ("rebar_scale", float, None),
    ("objective", str, None), ("fivo_resample_threshold", float, None),
    ("num_samples", int, 1), ("nvil_decay", float, None),
    ("nvil_normalise", bool, None), ("batch_size", int, 1),
    ("num_steps", int, 1), ("learning_rate", float, None),
    ("baseline_learning_rate", float, None), ("lr_schedule", str, None),
    ("lr_decay_steps", int, 0), ("lr_final_fraction", float, None),
    ("grad_clip_norm", float, None), ("log_every", int, 1),
    ("eval_every", int, 1), ("checkpoint_every", int, 1),
    ("eval_batch_size", int, 1), ("final_iwae_samples", int, 1),
    ("final_eval_scenes", int, 1), ("search_margin", float, None),
    ("best_of", int, 0), ("both_directions", bool, None),
    ("best_of_particles", bool, None), ("progress_bar", bool, None),
)
# Read directly (no default) by validation, the model or the trainer.
_REQUIRED = frozenset((
    "model_name", "seed", "num_devices", "data.canvas_size", "estimator",
    "num_samples", "batch_size", "num_steps", "learning_rate",
    "baseline_learning_rate", "grad_clip_norm", "log_every", "eval_every",
    "checkpoint_every", "eval_batch_size", "rho_start", "rho_end",
    "rho_anneal_steps", "model.num_slots", "model.likelihood_std",
    "model.presence_init", "model.extract_method", "model.render_method"))
# Sizes of the networks and latents: at least 1.
_POSITIVE_SIZES = frozenset((
    "model.num_slots", "model.glimpse_size", "model.z_what_dim",
    "model.lstm_size", "model.mlp_size", "apdr.hidden_size",
    "apdr.relation_size"))
_TYPE_NAMES = {int: "an integer", float: "a finite number",
               bool: "True or False", str: "a string"}


def _lookup(config, path: str):
  """The value at a dotted path, or `_MISSING`."""
  value = config
  for part in path.split("."):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return _MISSING
    value = value[part]
  return value


def _show(value) -> str:
  """A short one-line repr of a config value."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _has_type(value, kind) -> bool:
  if isinstance(value, bool) or kind is bool:
    return kind is bool and isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral)
  if kind is float:
    return isinstance(value, numbers.Real) and math.isfinite(value)
  return isinstance(value, kind)


def _typed_fields(config):
  """(path, type, minimum) of each field whose type `validate_config` checks."""
  fields = list(_FIELDS)
  sections = [("model", air.AIRConfig, {"canvas_size", "context_dim"})]
  if config.get("model_name") == "apdr":
    sections.append(("apdr", apdr.APDRConfig, {"air"}))
  for section, cls, skip in sections:
    for field in dataclasses.fields(cls):
      if field.name in skip or field.type not in _TYPE_NAMES:
        continue
      path = f"{section}.{field.name}"
      fields.append((path, field.type, 1 if path in _POSITIVE_SIZES else None))
  return fields


def _check_types(config) -> None:
  """`ConfigError` for a missing section or field, or a value of the wrong
  type (a string where a number belongs, a float for a count, ...) or below
  its minimum, before any comparison could fail on it."""
  for section in ("data", "model", "apdr"):
    value = config.get(section, _MISSING)
    if value is _MISSING and section != "apdr":
      raise ConfigError(f"the config has no {section!r} section")
    if value is not _MISSING and not isinstance(value,
                                                ml_collections.ConfigDict):
      raise ConfigError(f"{section}={_show(value)} must be a section of "
                        "fields (a ConfigDict), as in configs/default.py")
  for path, kind, minimum in _typed_fields(config):
    value = _lookup(config, path)
    if value is _MISSING:
      if path in _REQUIRED:
        raise ConfigError(f"the config has no field {path!r} (see "
                          "configs/default.py)")
      continue
    if not _has_type(value, kind):
      at_least = f" >= {minimum}" if minimum is not None else ""
      raise ConfigError(f"{path}={_show(value)} ({type(value).__name__}) "
                        f"must be {_TYPE_NAMES[kind]}{at_least}")
    if minimum is not None and value < minimum:
      raise ConfigError(f"{path}={value} must be >= {minimum}")


def _check_unknown(config) -> None:
  """`ConfigError` for a top-level or `data` field the project does not read
  (a typo, or a field since removed), instead of ignoring it silently."""
  known = {path.split(".")[0] for path, _, _ in _FIELDS}
  known |= {"data", "model", "apdr"}
  data_known = {path[len("data."):] for path, _, _ in _FIELDS
                if path.startswith("data.")}
  for where, keys, allowed in (("config", config.keys(), known),
                               ("config.data", config.data.keys(),
                                data_known)):
    unknown = sorted(set(keys) - allowed)
    if unknown:
      raise ConfigError(
          f"unknown {where} fields: {unknown} (a typo, or a field no longer "
          f"read; remove it, also from a workdir's config.json); see "
          f"configs/default.py")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad value.

  Types first (every field must have its default's type: a count is an
  integer, a rate a finite number, a flag True or False), then sizes and
  ranges, then the combinations of settings.
  """
  def need(ok, message):
    if not ok:
      raise ConfigError(message)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"a run config is an ml_collections.ConfigDict, got "
                      f"{type(config).__name__}")
  _check_types(config)
  _check_unknown(config)
  need(config.model_name in MODELS,
       f"model_name={config.model_name!r}; use one of {MODELS}")
  floor = config.get("presence_warmup_floor", 0.5)
  need(0.0 <= floor < 1.0,
       f"presence_warmup_floor={floor} must be in [0, 1)")
  need(not config.get("presence_warmup_steps", 0) or
       config.model_name != "apdr",
       "presence_warmup_steps applies to AIR (model_name='air'); APDR's "
       "warm-up is survival_warmup_steps")
  need(not config.get("background_warmup_steps", 0) or (
      config.model.get("background", "none") != "none"
      and config.model_name != "apdr"),
       "background_warmup_steps applies to AIR with a background component "
       "(model.background='mlp' or 'conv')")
  need(config.data.get("kind", "scenes") in DATA_KINDS,
       f"data.kind={config.data.get('kind')!r}; use one of {DATA_KINDS}")
  need(not is_sequential(config) or config.data.kind == "sequences",
       "model_name='apdr' needs data.kind='sequences'")
  need(config.data.get("train_enter_leave_fraction", 0.0) == 0.0 or
       config.data.get("kind") == "sequences",
       "data.train_enter_leave_fraction applies to data.kind='sequences' only")
  if config.data.get("kind") == "sequences":
    need(config.data.num_frames >= 1,
         f"data.num_frames={config.data.num_frames} must be >= 1")
    mix = config.data.get("train_enter_leave_fraction", 0.0)
    need(0.0 <= mix <= 1.0,
         f"data.train_enter_leave_fraction={mix} must be in [0, 1]")
    need(mix == 0.0 or not config.data.enter_leave,
         f"data.train_enter_leave_fraction={mix} mixes entering and leaving "
         "digits into training data that has none; with data.enter_leave=True "
         "every sequence already has them (set the fraction to 0)")
    need(config.get("curriculum_start_frames", 0) >= 0 and
         config.get("curriculum_steps_per_frame", 0) >= 0,
         "curriculum_start_frames and curriculum_steps_per_frame must be >= 0")
    cap = config.get("curriculum_max_frames", 0)
    need(cap == 0 or cap >= 2,
         f"curriculum_max_frames={cap} must be 0 (no cap) or >= 2 (one "
         "frame would never train propagation)")
    need(config.get("curriculum_max_frames_from", 0) >= 0,
         "curriculum_max_frames_from must be >= 0")
  need(not config.get("init_air_from") or is_sequential(config),
       "init_air_from (an AIR workdir) only applies to model_name='apdr'")
  need(config.estimator in ESTIMATORS,
       f"estimator={config.estimator!r}; use one of {ESTIMATORS}")
  need(config.estimator not in ("concrete", "rebar", "relax") or
       not is_sequential(config),
       f"estimator={config.estimator!r} is built for AIR only so far (APDR's "
       "propagation decisions are not relaxed yet); use 'vimco' or 'rws'")
  for key in ("concrete_temperature", "concrete_temperature_end",
              "rebar_temperature"):
    need(config.get(key, 1.0) > 0, f"{key}={config.get(key)} must be > 0")
  objective = config.get("objective", "iwae")
  need(objective in OBJECTIVES,
       f"objective={objective!r}; use one of {OBJECTIVES}")
  need(objective != "fivo" or (is_sequential(config) and
                               config.estimator == "rws"),
       "objective='fivo' is for model_name='apdr' with estimator='rws' (q "
       "learns from the particles' weights; VIMCO cannot be used with FIVO)")
  need(config.get("fivo_resample_threshold", 0.5) >= 0,
       f"fivo_resample_threshold={config.get('fivo_resample_threshold')} "
       "must be >= 0 (0: never resample; above 1: every frame)")
  need(config.estimator not in ("vimco", "rws") or config.num_samples >= 2,
       f"estimator={config.estimator!r} needs num_samples >= 2, got "
       f"{config.num_samples}")
  for key in ("learning_rate", "baseline_learning_rate", "grad_clip_norm"):
    need(config[key] > 0, f"{key}={config[key]} must be > 0")
  need(config.get("lr_schedule", "constant") in LR_SCHEDULES,
       f"lr_schedule={config.get('lr_schedule')!r}; use one of {LR_SCHEDULES}")
  need(0 <= config.get("lr_final_fraction", 0.0) <= 1,
       f"lr_final_fraction={config.get('lr_final_fraction')} must be in [0, 1]")
  need(config.get("search_margin", -1.0) < 0 or is_sequential(config),
       f"search_margin={config.get('search_margin')} applies to "
       "model_name='apdr' only (negative: off)")
  need(config.get("best_of", 0) == 0 or is_sequential(config),
       f"best_of={config.get('best_of')} applies to model_name='apdr' only")
  need(not config.get("both_directions", False) or
       config.get("best_of", 0) > 0,
       "both_directions=True needs best_of > 0 (it reads each sequence "
       "backward too and keeps the better of the two best-of-K samples)")
  need(not config.get("best_of_particles", False) or
       config.get("best_of", 0) > 0,
       "best_of_particles=True needs best_of > 0 (the number of particles)")
  need(0 < config.rho_end <= 1 and 0 < config.rho_start <= 1,
       f"rho_start={config.rho_start} and rho_end={config.rho_end} must be in (0, 1]")
  need(0 <= config.get("nvil_decay", 0.0) <= 1,
       f"nvil_decay={config.get('nvil_decay')} must be in [0, 1]")
  m = config.model
  need(m.likelihood_std > 0, f"model.likelihood_std={m.likelihood_std} must be > 0")
  for key in ("scale_prior_std", "shift_prior_std", "where_scale_init"):
    need(m.get(key, 1.0) > 0, f"model.{key}={m.get(key)} must be > 0")
  need(0 < m.presence_init < 1,
       f"model.presence_init={m.presence_init} must be in (0, 1)")
  need(m.get("canvas", "sum") in air.CANVAS_RULES,
       f"model.canvas={m.get('canvas')!r}; use one of {air.CANVAS_RULES}")
  need(m.get("image_rank", 0) >= 0,
       f"model.image_rank={m.get('image_rank')} must be >= 0 (0 = full rank)")
  for key in ("extract_method", "render_method"):
    need(m[key] in ("gather", "separable"),
         f"model.{key}={m[key]!r}; use 'gather' or 'separable'")
  model_config(config)


def temperature_at(config, step):
  """The Concrete relaxation's temperature at `step` (log-linear from
  `concrete_temperature` to `concrete_temperature_end` over
  `concrete_anneal_steps`; constant when that is 0)."""
  start = config.get("concrete_temperature", 0.5)
  return relaxed.temperature_at(step, start,
                                config.get("concrete_temperature_end", start),
                                config.get("concrete_anneal_steps", 0))


def rho_at(config, step):
  return air.presence_rho(step, config.rho_start, config.rho_end,
                          config.rho_anneal_steps)
