"""Launcher plumbing shared by the entry points: distributed set-up, errors."""

import contextlib
import json
import os
import sys

from absl import flags

_COORDINATOR = None
_NUM_PROCESSES = None
_PROCESS_ID = None


def define_distributed_flags():
  global _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  _COORDINATOR = flags.DEFINE_string(
      "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
      "host:port of process 0, for multi-host training.")
  _NUM_PROCESSES = flags.DEFINE_integer(
      "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "1")),
      "Number of processes (hosts).")
  _PROCESS_ID = flags.DEFINE_integer(
      "process_id", int(os.environ.get("JAX_PROCESS_ID", "0")),
      "This process's index.")


def initialize_distributed():
  """Calls `jax.distributed.initialize` when more than one process is asked."""
  if _NUM_PROCESSES is None or _NUM_PROCESSES.value <= 1:
    return
  import jax
  if not _COORDINATOR.value:
    sys.exit("error: --num_processes > 1 needs --coordinator_address=HOST:PORT")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


@contextlib.contextmanager
def user_errors():
  """Turns the library's user-fixable errors into one clear line and exit 2."""
  from apdr_jax.errors import ApdrError
  try:
    yield
  except ApdrError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def format_result(result: dict) -> str:
  return json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                     for k, v in result.items()}, indent=2)
