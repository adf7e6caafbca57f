"""What a run config (`configs/*.py`) means: its checks and derived values.

`validate_config` names the first bad value before anything is built;
`model_config` turns the `model`/`apdr` fields into the frozen architecture
dataclasses; the rest are schedules (presence prior, curriculum) and sizes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax.errors import ConfigError

ESTIMATORS = ("nvil", "vimco")
MODELS = ("air", "apdr")
DATA_KINDS = ("scenes", "sequences")
LR_SCHEDULES = ("constant", "cosine")


def model_config(config: ml_collections.ConfigDict):
  """The model's config: `AIRConfig`, or `APDRConfig` when model_name='apdr'.

  The canvas size comes from the data; APDR's discovery is AIR with the
  relation state as its context.
  """
  fields = {f.name for f in dataclasses.fields(air.AIRConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ConfigError(f"unknown config.model fields: {sorted(unknown)}; "
                      f"known: {sorted(fields)}")
  model = config.model.to_dict()
  if config.model_name != "apdr":
    return air.AIRConfig(canvas_size=config.data.canvas_size, **model)
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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad value."""
  def need(ok, message):
    if not ok:
      raise ConfigError(message)
  need(config.model_name in MODELS,
       f"model_name={config.model_name!r}; use one of {MODELS}")
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
  need(config.num_samples >= 1, f"num_samples={config.num_samples} must be >= 1")
  need(config.estimator != "vimco" or config.num_samples >= 2,
       f"estimator='vimco' needs num_samples >= 2, got {config.num_samples}")
  for key in ("batch_size", "num_steps", "log_every", "eval_every",
              "checkpoint_every", "eval_batch_size"):
    need(config[key] >= 1, f"{key}={config[key]} must be >= 1")
  for key in ("learning_rate", "baseline_learning_rate", "grad_clip_norm"):
    need(config[key] > 0, f"{key}={config[key]} must be > 0")
  need(config.get("lr_schedule", "constant") in LR_SCHEDULES,
       f"lr_schedule={config.get('lr_schedule')!r}; use one of {LR_SCHEDULES}")
  need(config.get("lr_decay_steps", 0) >= 0,
       f"lr_decay_steps={config.get('lr_decay_steps')} must be >= 0 "
       "(0 = num_steps)")
  need(0 <= config.get("lr_final_fraction", 0.0) <= 1,
       f"lr_final_fraction={config.get('lr_final_fraction')} must be in [0, 1]")
  need(config.get("search_margin", -1.0) < 0 or is_sequential(config),
       f"search_margin={config.get('search_margin')} applies to "
       "model_name='apdr' only (negative: off)")
  need(config.get("best_of", 0) >= 0, f"best_of={config.get('best_of')} must "
       "be >= 0 (0: off)")
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
  m = config.model
  need(m.num_slots >= 1, f"model.num_slots={m.num_slots} must be >= 1")
  need(m.likelihood_std > 0, f"model.likelihood_std={m.likelihood_std} must be > 0")
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


def rho_at(config, step):
  return air.presence_rho(step, config.rho_start, config.rho_end,
                          config.rho_anneal_steps)
