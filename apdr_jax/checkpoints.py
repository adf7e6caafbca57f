"""Orbax checkpoints of the train state, plus the config beside them.

Layout of a workdir: `config.json` (the run's full config), `checkpoints/<step>/`
(Orbax), `metrics.jsonl`, `tensorboard/`, pictures. Restoring takes the abstract
target's shardings, so a checkpoint written on 8 devices restores on 1 and back.
"""

import json
import logging
import os
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from apdr_jax import faults
from apdr_jax.errors import CheckpointError


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = config_path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, config_path(workdir))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, or a `CheckpointError` naming the file."""
  path = config_path(workdir)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{path} not found: {workdir!r} is not a training workdir "
        "(run launch.train with --workdir first).")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable or corrupt: {e}") from e


def manager(workdir: str, max_to_keep: int = 3,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager; `read_only` creates and deletes
  nothing (evaluation), else a killed writer's temporary folders are
  cleaned up."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  if read_only:  # Orbax warns that a read-only manager will not save
    absl_logger.setLevel(logging.ERROR)
  try:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)
  finally:
    absl_logger.setLevel(level)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Writes `state` as step `step` and waits until it is on disk.

  Orbax writes into a temporary folder and renames it when complete, so a
  run killed mid-write leaves the previous checkpoints as they were.

  Raises:
    CheckpointError: the write failed (a full disk, say); the checkpoints
      written before are kept.
  """
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  levels = [logger.level for logger in loggers]
  hook = sys.unraisablehook
  try:
    # A failed write makes Orbax's threads and TensorStore's event loop log
    # hundreds of lines; the error below names the cause in one.
    for logger in loggers:
      logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    mngr.save(step, args=ocp.args.StandardSave(state))
    faults.kill_point("checkpoint_write", step)
    mngr.wait_until_finished()
  except Exception as e:  # Orbax and TensorStore raise many types
    # The failed write's tasks are collected later: stay quiet until exit.
    raise CheckpointError(
        f"could not write checkpoint {step} under {mngr.directory} "
        f"({_os_cause(e)}); the checkpoints written before are kept") from e
  for logger, level in zip(loggers, levels):
    logger.setLevel(level)
  sys.unraisablehook = hook


def _os_cause(error: Exception) -> str:
  """The operating system's reason inside a storage error, else its text."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = str(error)
  for reason in ("No space left on device", "File too large",
                 "Disk quota exceeded", "Permission denied",
                 "Read-only file system"):
    if reason in text:
      return reason
  return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else (
      type(error).__name__)


def _key_name(key) -> str:
  for field in ("key", "name", "idx"):
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def _shapes_on_disk(step_dir: str) -> dict | None:
  """Leaf path -> shape of a checkpoint, from Orbax's `_METADATA`; None if
  that file is missing or unreadable."""
  try:
    with open(os.path.join(step_dir, "default", "_METADATA")) as f:
      tree = json.load(f)["tree_metadata"]
    return {tuple(str(k["key"]) for k in leaf["key_metadata"]):
            tuple(leaf["value_metadata"].get("write_shape") or ())
            for leaf in tree.values()
            if leaf["value_metadata"].get("value_type") != "None"}
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def _mismatch(target, on_disk: dict) -> str:
  """'' if `target`'s leaves have the paths on disk, with shapes that the
  written chunks tile (Orbax records each leaf's chunk shape: the whole
  array, or one device's shard of it); else what differs (a few paths)."""
  ours = {tuple(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}

  def fits(path):
    shape, chunk = ours.get(path), on_disk.get(path)
    return (shape is not None and chunk is not None and
            len(shape) == len(chunk) and
            all(c == s or (c > 0 and s % c == 0)
                for s, c in zip(shape, chunk)))

  differ = sorted(p for p in set(ours) | set(on_disk) if not fits(p))
  return ", ".join("/".join(p) + f": {on_disk.get(p)} on disk, {ours.get(p)} "
                   "here" for p in differ[:3])


def set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Moves a damaged checkpoint to `<workdir>/damaged_checkpoints/` (never
  deletes it) and returns where it went."""
  workdir = os.path.dirname(str(mngr.directory))
  folder = os.path.join(workdir, "damaged_checkpoints")
  os.makedirs(folder, exist_ok=True)
  destination = os.path.join(folder, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  while os.path.exists(destination):
    destination += "_"
  os.replace(os.path.join(str(mngr.directory), str(step)), destination)
  mngr.reload()
  return destination


def restore_latest(mngr: ocp.CheckpointManager, target,
                   set_aside_damaged: bool = True):
  """Restores the newest readable checkpoint into `target`'s structure and
  shardings.

  A checkpoint whose files cannot be read (truncated, overwritten, half
  copied) is moved to `<workdir>/damaged_checkpoints/` with a one-line
  warning on stderr, and the next newest is tried. A readable checkpoint of
  other shapes (another config or model) is an error, and stays where it is.

  Args:
    mngr: the manager.
    target: a state pytree (concrete or `jax.ShapeDtypeStruct`s with shardings).
    set_aside_damaged: False: a damaged checkpoint is an error instead.

  Returns:
    `(step, state)`, or `(None, None)` if there is no readable checkpoint.

  Raises:
    CheckpointError: a checkpoint does not match `target`'s shapes, or (with
      `set_aside_damaged=False`) cannot be read.
  """
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      target)
  for step in sorted(mngr.all_steps(), reverse=True):
    step_dir = os.path.join(str(mngr.directory), str(step))
    on_disk = _shapes_on_disk(step_dir)
    mismatch = _mismatch(abstract, on_disk) if on_disk is not None else ""
    if mismatch:
      raise CheckpointError(
          f"checkpoint {step_dir} does not match this config ({mismatch})")
    try:
      return step, mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many types; name the file instead.
      cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(
          e) else type(e).__name__
      if not set_aside_damaged:
        raise CheckpointError(
            f"checkpoint {step_dir} is damaged ({cause})") from e
      moved = set_aside(mngr, step)
      print(f"warning: checkpoint {step_dir} is damaged ({cause}); moved to "
            f"{moved}, trying the one before", file=sys.stderr, flush=True)
  return None, None
