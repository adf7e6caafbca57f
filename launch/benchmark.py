r"""Training throughput, compile time and peak memory (DESIGN §6).

  python -m launch.benchmark --config=configs/air_multi_mnist.py \
      [--steps=200] [--repeats=3] [--glimpse] [--out=benchmark.json]

Runs the config's jitted update step with NVIL (K=1) and VIMCO (K=5) on the
standard shapes (batch 64, 50x50, N=3 unless the config says otherwise) and
reports the median images/s over `repeats` timed blocks of `steps` steps, the
first call's time (compile), and peak memory. The scene content does not change
the cost of any operation, so random uint8 scenes stand in for the data set.
For APDR (`--config=configs/apdr_moving_mnist.py --estimators=vimco:5`) the
unit is sequences of the full length `data.num_frames`, and the report adds
the share of a training run's time spent compiling (one compile per
curriculum stage, with the steps per stage and the measured step times).
`--glimpse` also times both glimpse formulations, forward and backward.
Time nothing else on the machine meanwhile.
"""

import json
import resource
import statistics
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/air_multi_mnist.py", "Config to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per timed block.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed blocks (median taken).")
_GLIMPSE = flags.DEFINE_bool("glimpse", False, "Also time glimpse methods.")
_ESTIMATORS = flags.DEFINE_list("estimators", ["nvil:1", "vimco:5"],
                                "estimator:K pairs to run.")
_OUT = flags.DEFINE_string("out", "benchmark.json", "Where the JSON goes.")


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _device_peak_mb(jax):
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def benchmark_training(config, steps, repeats):
  import jax
  import numpy as np
  from apdr_jax import input_pipeline
  from apdr_jax import parallel
  from apdr_jax import run_config
  from apdr_jax import train

  run_config.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_divides(config.batch_size, mesh)
  size = config.data.canvas_size
  sequential = run_config.is_sequential(config)
  shape = ((512, config.data.num_frames) if sequential else (4096,))
  images = np.random.default_rng(0).integers(
      0, 256, shape + (size, size), dtype=np.uint8)
  images = input_pipeline.place_train_streams(images, config.batch_size, mesh)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  update = train.make_update_step(config, mesh)
  key = jax.random.key(1)
  start = time.perf_counter()
  state, _ = update(state, images, key)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = update(state, images, key)
    jax.block_until_ready(state)
    rates.append(steps * config.batch_size / (time.perf_counter() - start))
  unit = "sequences" if sequential else "images"
  result = dict(model=config.model_name, unit=unit,
              estimator=config.estimator, num_samples=config.num_samples,
              batch_size=config.batch_size, canvas=size,
              num_slots=config.model.num_slots,
              images_per_second=statistics.median(rates),
              images_per_second_all=rates, compile_seconds=compile_s,
              devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  if sequential:
    result.update(num_frames=config.data.num_frames,
                  sequences_per_second=result["images_per_second"],
                  frames_per_second=result["images_per_second"] *
                  config.data.num_frames,
                  **compile_share(config, compile_s,
                                  config.batch_size / result[
                                      "images_per_second"]))
  return result


def compile_share(config, compile_s, full_step_s) -> dict:
  """Estimated share of a whole training run spent compiling.

  One compile per curriculum stage (each about `compile_s`, as the scan body
  does not grow with T), and a step of a `T`-frame stage costing
  `T / num_frames` of the full-length step.
  """
  from apdr_jax import run_config
  total = config.data.num_frames
  stages = {}
  for step in range(config.num_steps):
    frames = run_config.num_frames_at(config, step)
    stages[frames] = stages.get(frames, 0) + 1
  train_s = sum(n * full_step_s * t / total for t, n in stages.items())
  compile_total = compile_s * len(stages)
  return dict(curriculum_stages=len(stages),
              estimated_run_compile_seconds=compile_total,
              estimated_run_train_seconds=train_s,
              compile_share=compile_total / (compile_total + train_s))


def benchmark_glimpses(config, repeats=20):
  """Forward and forward+backward time of extract and render, both methods."""
  import jax
  import jax.numpy as jnp
  from apdr_jax import glimpse

  batch = config.batch_size * config.model.num_slots
  size, g = config.data.canvas_size, config.model.glimpse_size
  rng = jax.random.key(0)
  images = jax.random.uniform(rng, (batch, size, size))
  patches = jax.random.uniform(rng, (batch, g, g))
  z_where = jnp.tile(jnp.array([[2.5, 0.1, -0.2]]), (batch, 1))
  results = {}
  for method in ("gather", "separable"):
    cases = {
        "extract": lambda im, zw, m=method: glimpse.extract(im, zw, g, m).sum(),
        "render": lambda p, zw, m=method: glimpse.render(p, zw, size, size,
                                                         m).sum(),
    }
    for name, fn in cases.items():
      arg = images if name == "extract" else patches
      for kind, f in (("forward", jax.jit(fn)),
                      ("backward", jax.jit(jax.grad(fn, argnums=(0, 1))))):
        jax.block_until_ready(f(arg, z_where))
        start = time.perf_counter()
        for _ in range(repeats):
          out = f(arg, z_where)
        jax.block_until_ready(out)
        results[f"{name}/{method}/{kind}_ms"] = (
            1e3 * (time.perf_counter() - start) / repeats)
  return results


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  report = {"backend": jax.default_backend(), "runs": []}
  for spec in _ESTIMATORS.value:
    estimator, k = spec.split(":")
    config = _CONFIG.value.copy_and_resolve_references()
    config.estimator, config.num_samples = estimator, int(k)
    run = benchmark_training(config, _STEPS.value, _REPEATS.value)
    run["peak_rss_mb"] = _peak_rss_mb()
    run["device_peak_mb"] = _device_peak_mb(jax)
    report["runs"].append(run)
    print(f"{estimator} K={k}: {run['images_per_second']:.1f} {run['unit']}/s, "
          f"compile {run['compile_seconds']:.1f} s, "
          f"peak RSS {run['peak_rss_mb']:.0f} MB" + (
              f", compile share of a run {run['compile_share']:.1%}"
              if "compile_share" in run else ""), flush=True)
  if _GLIMPSE.value:
    report["glimpse"] = benchmark_glimpses(_CONFIG.value)
    for key, value in report["glimpse"].items():
      print(f"{key}: {value:.3f}", flush=True)
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
