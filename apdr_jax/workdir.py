"""One training run per workdir, and what a resumed run may change.

`lock(workdir)` holds an exclusive `flock` on `<workdir>/.lock` for the life
of a run: a second `launch.train` on the same workdir is refused at once, and
since the kernel drops the lock when its process dies (SIGKILL included), a
killed run never leaves it stuck. `check_resumable` compares the config a run
was started with (`config.json`) with the one it is resumed with.
"""

import contextlib
import fcntl
import os

import ml_collections

from apdr_jax.errors import ApdrError
from apdr_jax.errors import ConfigError

# Fields a resumed run may change: they set how long it runs, what it logs
# and evaluates, and where; not the model, the data or the optimisation.
# `num_steps` also sets a cosine learning-rate schedule's length.
SAFE_TO_CHANGE = frozenset({
    "num_steps", "log_every", "eval_every", "checkpoint_every",
    "progress_bar", "eval_batch_size", "final_iwae_samples",
    "final_eval_scenes", "best_of", "both_directions", "best_of_particles",
    "search_margin", "num_devices", "init_air_from", "data.cache_dir",
})


class WorkdirInUseError(ApdrError):
  """Another run holds the workdir."""


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def check_resumable(saved: ml_collections.ConfigDict,
                    config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume `workdir`'s run with a config that changes it.

  Fields the saved config predates (an older version) are not compared.

  Raises:
    ConfigError: naming every field that differs outside `SAFE_TO_CHANGE`.
  """
  before, now = _flat(saved), _flat(config)
  changed = sorted(key for key in set(before) & set(now)
                   if key not in SAFE_TO_CHANGE and before[key] != now[key])
  if changed:
    listed = ", ".join(f"{key}={before[key]!r} there, {now[key]!r} here"
                       for key in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise ConfigError(
        f"{workdir} holds a run with another config ({listed}{more}); a "
        "resumed run may change only num_steps, logging, evaluation and "
        "device settings: use a new --workdir, or the run's own values")


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True):
  """Holds `<workdir>/.lock` while the block runs.

  Raises:
    WorkdirInUseError: another live process holds it.
  """
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, ".lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
      raise WorkdirInUseError(
          f"{workdir} is in use by another training run (pid {holder}); "
          "wait for it to finish, stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the lock
