r"""Where an update step's time goes, by the model's named scopes.

  python -m launch.profile --config=configs/apdr_moving_mnist.py \
      [--estimator=vimco:5] [--steps=10] [--out=profile.json]

Runs the config's jitted update step (random uint8 data, as
`launch.benchmark`) under `jax.profiler.trace`, sums the XLA:CPU thunks'
`"X"` events by HLO instruction, and maps each instruction to its `op_name`
(the `jax.named_scope` path) through the compiled module's text. Each
instruction is charged to the innermost scope of `SCOPES` on its path, and
to the forward or the backward pass (`transpose(...)` in the path). Time
nothing else on the machine meanwhile.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/apdr_moving_mnist.py", "Config to profile.")
_ESTIMATOR = flags.DEFINE_string("estimator", "", "estimator:K (default: the "
                                 "config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Traced update steps.")
_FRAMES = flags.DEFINE_integer("frames", 0, "Frames read per sequence (0: "
                               "all; fewer: a curriculum stage).")
_OUT = flags.DEFINE_string("out", "profile.json", "Where the JSON goes.")

# Innermost wins; anything else is "other".
SCOPES = ("ink_anchor", "object_scan", "prior", "propagation",
          "propagation_render", "temporal", "discovery", "likelihood",
          "compact", "objective", "optimizer")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r"op_name=\"([^\"]*)\"")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")


def op_names(hlo_text: str) -> dict:
  """Instruction name -> op_name, from a compiled module's text.

  A fusion without metadata of its own takes its computation's root's.
  """
  names, calls, roots, computation = {}, {}, {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and " = " not in line:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name = match.group(1)
    called = _CALLS.search(line)
    called = called and called.group(1)
    op_name = _OP_NAME.search(line)
    op_name = op_name and op_name.group(1)
    if op_name:
      names[name] = op_name
    if called:
      calls[name] = called
    if line.lstrip().startswith("ROOT") and computation and op_name:
      roots[computation] = op_name
  for name, called in calls.items():
    names.setdefault(name, roots.get(called, ""))
  return names


def classify(op_name: str) -> tuple[str, str]:
  """`(scope, "forward" | "backward")` of an op_name path."""
  parts = re.split(r"[/()]", op_name)
  scope = "other"
  for part in parts:
    if part in SCOPES:
      scope = part
  return scope, ("backward" if "transpose(" in op_name else "forward")


def profile_update(config, steps: int, frames: int = 0) -> dict:
  import jax
  import numpy as np
  from apdr_jax import input_pipeline
  from apdr_jax import parallel
  from apdr_jax import run_config
  from apdr_jax import train

  run_config.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices)
  size = config.data.canvas_size
  sequential = run_config.is_sequential(config)
  shape = (512, config.data.num_frames) if sequential else (4096,)
  images = np.random.default_rng(0).integers(0, 256, shape + (size, size),
                                             dtype=np.uint8)
  images = input_pipeline.place_train_streams(images, config.batch_size, mesh)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  # The state's step sits in the curriculum's first stage: ask for the
  # full length unless told otherwise.
  frames = (frames or config.data.num_frames) if sequential else None
  update = train.make_update_step(config, mesh, num_frames=frames)
  key = jax.random.key(1)
  names = op_names(update.lower(state, images, key).compile().as_text())
  for _ in range(2):  # compile and warm up
    state, _ = update(state, images, key)
  jax.block_until_ready(state)
  trace_dir = tempfile.mkdtemp(prefix="apdr_profile_")
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, _ = update(state, images, key)
    jax.block_until_ready(state)
  wall = (time.perf_counter() - start) / steps
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  by_scope = collections.Counter()
  by_op = collections.Counter()
  for event in events:
    op = (event.get("args") or {}).get("hlo_op")
    if event.get("ph") != "X" or not op:
      continue
    ms = event["dur"] / 1e3 / steps
    scope, direction = classify(names.get(op, ""))
    by_scope[f"{scope}/{direction}"] += ms
    by_op[op] += ms
  busy = sum(by_scope.values())
  return dict(step_ms=1e3 * wall, thunk_ms=busy,
              by_scope=dict(by_scope.most_common()),
              top_ops={op: dict(ms=ms, op_name=names.get(op, ""))
                       for op, ms in by_op.most_common(100)},
              trace=path)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value.copy_and_resolve_references()
  if _ESTIMATOR.value:
    estimator, k = _ESTIMATOR.value.split(":")
    config.estimator, config.num_samples = estimator, int(k)
  report = profile_update(config, _STEPS.value, _FRAMES.value)
  print(f"step {report['step_ms']:.1f} ms wall, {report['thunk_ms']:.1f} ms "
        "in XLA thunks (summed over threads)")
  for scope, ms in report["by_scope"].items():
    print(f"  {scope:32s} {ms:8.1f} ms {ms / report['thunk_ms']:6.1%}")
  print("top instructions:")
  for op, row in list(report["top_ops"].items())[:15]:
    print(f"  {row['ms']:8.1f} ms  {op}  {row['op_name'][-90:]}")
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
