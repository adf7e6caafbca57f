"""Metric writers: a JSONL file (one object per logged step) and TensorBoard."""

import json
import math
import os

from apdr_jax import faults


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files.

  A disabled writer (`enabled=False`, on processes other than 0) does nothing.
  A run that resumes from the checkpoint of `start_step` drops what a killed
  run logged after it: `metrics.jsonl` keeps the records of steps up to
  `start_step` (and loses a line cut short by the kill), and TensorBoard is
  told to purge the later events (`purge_step`), so each step appears once.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _keep_up_to(path, start_step)
    self._jsonl = open(path, "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=start_step + 1)
    except ImportError:  # TensorBoard files are optional; JSONL always works.
      self._tb = None

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step)}
    record.update({k: (v if math.isfinite(v) else str(v))
                   for k, v in clean.items()})
    line = json.dumps(record) + "\n"
    if faults.armed("metrics_write", step):  # the fault tests' torn line
      self._jsonl.write(line[:len(line) // 2])
      self._jsonl.flush()
      faults.kill_point("metrics_write", step)
    self._jsonl.write(line)
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in clean.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _keep_up_to(path: str, last_step: int) -> None:
  """Rewrites `path` (atomically) with only its whole records of steps
  `<= last_step`; nothing to do if it holds no other."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if line.endswith("\n") and json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # a line cut short by a kill
  if len(kept) == len(lines):
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)
