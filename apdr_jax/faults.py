"""Fault injection for the fault tests: the process kills itself on cue.

`APDR_JAX_KILL_AT=<point>:<step>` sends SIGKILL to this process when the
trainer reaches `point` at `step` (`kill_point`). Points: `after_update` (a
step computed, nothing logged or saved), `checkpoint_write` (a checkpoint
being written, not yet complete), `metrics_write` (half a metrics line
written). Unset, it costs one dictionary lookup per call.
"""

import os
import signal

ENV_VAR = "APDR_JAX_KILL_AT"


def armed(point: str, step: int) -> bool:
  """Whether `APDR_JAX_KILL_AT` names `point:step`."""
  return os.environ.get(ENV_VAR) == f"{point}:{step}"


def kill_point(point: str, step: int) -> None:
  """SIGKILLs this process if `APDR_JAX_KILL_AT` names `point:step`."""
  if armed(point, step):
    os.kill(os.getpid(), signal.SIGKILL)
