"""Orbax checkpoints of the train state, plus the config beside them.

Layout of a workdir: `config.json` (the run's full config), `checkpoints/<step>/`
(Orbax), `metrics.jsonl`, `tensorboard/`, pictures. Restoring takes the abstract
target's shardings, so a checkpoint written on 8 devices restores on 1 and back.
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

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


def manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, target):
  """Restores the newest checkpoint into `target`'s structure and shardings.

  Args:
    mngr: the manager.
    target: a state pytree (concrete or `jax.ShapeDtypeStruct`s with shardings).

  Returns:
    `(step, state)`, or `(None, None)` if there is no checkpoint.

  Raises:
    CheckpointError: a checkpoint exists but cannot be read or does not match.
  """
  step = mngr.latest_step()
  if step is None:
    return None, None
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      target)
  try:
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # Orbax raises many types; name the file instead.
    raise CheckpointError(
        f"checkpoint {mngr.directory}/{step} is corrupt or does not match "
        f"this config ({type(e).__name__}: {str(e)[:300]})") from e
  return step, state
