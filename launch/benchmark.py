r"""Training throughput, compile time and peak memory (DESIGN §6).

  python -m launch.benchmark --config=configs/air_multi_mnist.py \
      [--steps=200] [--repeats=3] [--glimpse] [--out=benchmark.json]
  python -m launch.benchmark --config=configs/apdr_moving_mnist.py \
      --estimators=vimco:5 --steps=10 --repeats=2 \
      --air_config=configs/air_moving_mnist.py --eval

Runs the config's jitted update step with NVIL (K=1) and VIMCO (K=5) on the
standard shapes (batch 64, 50x50, N=3 unless the config says otherwise) and
reports the median images/s over `repeats` timed blocks of `steps` steps, the
first call's time (compile), and peak memory. The scene content does not change
the cost of any operation, so random uint8 scenes stand in for the data set.
For APDR (`--config=configs/apdr_moving_mnist.py --estimators=vimco:5`) the
unit is sequences of the full length `data.num_frames` (frame-samples/s =
sequences/s x T x K), and the report adds the step time at the curriculum's
first stage (frames beyond it are skipped inside the one compiled step), the
number of compiles, and the share of a training run's time spent compiling.
`--params_from=WORKDIR` times a trained state of the config's model on its
own data instead of random ones (APDR's ink anchor reads crops only where
the objects' windows fit in them, which random parameters rarely give).
`--air_config` also runs that AIR config with the same estimators and
reports its frame-samples/s beside APDR's. `--eval` times the held-out
evaluation of `--eval_sequences` sequences: q's single pass (modes), and the
best of `--eval_best_of` samples read both ways (`launch.evaluate`'s
search). `--glimpse` also times both glimpse formulations, forward and
backward.
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
_AIR_CONFIG = config_flags.DEFINE_config_file(
    "air_config", None, "Optional AIR config to run beside an APDR one.")
_EVAL = flags.DEFINE_bool("eval", False, "APDR: also time the evaluation.")
_GLIMPSE_NETS = flags.DEFINE_list(
    "glimpse_nets", [], "Time each estimator once per model.glimpse_net "
    "listed (e.g. mlp,conv), parameter counts beside; empty: the config's.")
_PARAMS_FROM = flags.DEFINE_string(
    "params_from", "", "A workdir of --config's model: time its trained "
    "state on the config's training data (and --eval on held-out data).")
_EVAL_SEQUENCES = flags.DEFINE_integer("eval_sequences", 200,
                                       "Sequences the evaluation reads.")
_EVAL_BEST_OF = flags.DEFINE_integer("eval_best_of", 100,
                                     "Samples of the best-of-K search.")


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _device_peak_mb(jax):
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _parameter_counts(params) -> dict:
  """Parameters in all, in the objects' glimpse encoder and decoder, and in
  the background component (AIR's, or APDR's discovery's)."""
  import jax
  count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))
  air_params = params.get("air", params)
  return dict(
      num_params=count(params),
      glimpse_net_params=count([air_params.get("what_encoder"),
                                air_params.get("decoder")]),
      background_params=count(air_params.get("background_net")))


def benchmark_training(config, steps, repeats, params_from=""):
  """Throughput of the config's update step.

  With `params_from` (a workdir of the same model), its latest checkpoint's
  state and the config's own training data stand in for the random ones:
  APDR's ink anchor reads crops only where every object's window fits in
  one (`ink.py`), which random parameters rarely give.
  """
  import jax
  import numpy as np
  from apdr_jax import checkpoints
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
  state = train.create_train_state(config, jax.random.key(0))
  if params_from:
    step, state = checkpoints.restore_latest(
        checkpoints.manager(params_from, read_only=True), state,
        set_aside_damaged=False)
    if state is None:
      raise SystemExit(f"error: no checkpoint in {params_from}")
    images = input_pipeline.training_images(
        config, input_pipeline.load_data(config)[0])
  images = input_pipeline.place_train_streams(images, config.batch_size, mesh)
  state = jax.device_put(state, parallel.replicated(mesh))
  key = jax.random.key(1)

  def timed(update):
    nonlocal state
    start = time.perf_counter()
    state, _ = update(state, images, key)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    rates = []
    if params_from:  # first touch of the memory-mapped data, untimed
      for _ in range(steps):
        state, _ = update(state, images, key)
      jax.block_until_ready(state)
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        state, _ = update(state, images, key)
      jax.block_until_ready(state)
      rates.append(steps * config.batch_size / (time.perf_counter() - start))
    return compile_s, rates

  # Full-length sequences: the state's step stays in the curriculum's first
  # stage, so the full length is asked for explicitly.
  frames = config.data.num_frames if sequential else None
  update = train.make_update_step(config, mesh, num_frames=frames)
  compile_s, rates = timed(update)
  unit = "sequences" if sequential else "images"
  result = dict(model=config.model_name, unit=unit,
              glimpse_net=config.model.get("glimpse_net", "mlp"),
              background=config.model.get("background", "none"),
              **_parameter_counts(state.params),
              estimator=config.estimator, num_samples=config.num_samples,
              batch_size=config.batch_size, canvas=size,
              num_slots=config.model.num_slots,
              images_per_second=statistics.median(rates),
              images_per_second_all=rates, compile_seconds=compile_s,
              frame_samples_per_second=statistics.median(rates) *
              config.num_samples,
              devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  if sequential:
    first = run_config.num_frames_at(config, 0)
    stage_rate = None
    if first < config.data.num_frames:
      stage_rate = statistics.median(timed(train.make_update_step(
          config, mesh, num_frames=first))[1])
    result.update(num_frames=config.data.num_frames,
                  frame_samples_per_second=result["images_per_second"] *
                  config.data.num_frames * config.num_samples,
                  first_stage_frames=first,
                  first_stage_sequences_per_second=stage_rate,
                  sequences_per_second=result["images_per_second"],
                  frames_per_second=result["images_per_second"] *
                  config.data.num_frames,
                  **compile_share(config, compile_s,
                                  config.batch_size / result[
                                      "images_per_second"]))
  return result


def compile_share(config, compile_s, full_step_s) -> dict:
  """Estimated share of a whole training run spent compiling.

  One compile per run (the curriculum's stage is a value inside the step),
  and a step of a `T`-frame stage costing `T / num_frames` of the
  full-length step (the skipped frames cost nothing;
  `first_stage_sequences_per_second` checks it).
  """
  from apdr_jax import run_config
  total = config.data.num_frames
  stages = {}
  for step in range(config.num_steps):
    frames = run_config.num_frames_at(config, step)
    stages[frames] = stages.get(frames, 0) + 1
  train_s = sum(n * full_step_s * t / total for t, n in stages.items())
  compile_total = compile_s
  return dict(curriculum_stages=len(stages),
              estimated_run_compile_seconds=compile_total,
              estimated_run_train_seconds=train_s,
              compile_share=compile_total / (compile_total + train_s))


def benchmark_evaluation(config, num_sequences: int, best_of: int,
                         params_from: str = "") -> dict:
  """Sequences/s of q's single pass and of the best-of-K search both ways.

  Random parameters and frames (every slot is computed whether or not an
  object is present), or with `params_from` a trained state on held-out
  sequences (the ink anchor's crops depend on the objects). Each reading
  first compiles on one chunk, then reads all `num_sequences` (a multiple
  of the chunk, so that no other shape compiles) under the clock.
  """
  import jax
  import numpy as np
  from apdr_jax import apdr
  from apdr_jax import run_config
  from apdr_jax import sequence_evaluation

  mc = run_config.model_config(config)
  params = apdr.init_params(mc, jax.random.key(0))
  size = config.data.canvas_size
  sequences = np.random.default_rng(0).random(
      (num_sequences, config.data.num_frames, size, size), dtype=np.float32)
  if params_from:  # the trained state on the first held-out sequences
    from apdr_jax import checkpoints
    from apdr_jax import input_pipeline
    from apdr_jax import train
    _, state = checkpoints.restore_latest(
        checkpoints.manager(params_from, read_only=True),
        train.create_train_state(config, jax.random.key(0)),
        set_aside_damaged=False)
    params = state.params
    test = input_pipeline.load_data(config)[1]["images"][:num_sequences]
    sequences = test.astype(np.float32) / 255.0
  batch = config.eval_batch_size
  runs = dict(
      single_pass=lambda x: sequence_evaluation.decompose(
          mc, params, x, batch_size=batch),
      best_of_both_directions=lambda x: sequence_evaluation.read_both_directions(
          mc, params, x, 1e-5, best_of, jax.random.key(0), batch))
  result = dict(eval_sequences=num_sequences, eval_best_of=best_of)
  # One chunk of each reading's size compiles it (`decompose` holds K
  # samples of `batch * 4 // K` sequences at once).
  warm_up = dict(single_pass=batch,
                 best_of_both_directions=max(1, batch * 4 // best_of))
  for name, fn in runs.items():
    fn(sequences[:warm_up[name]])
    start = time.perf_counter()
    fn(sequences)
    seconds = time.perf_counter() - start
    result[f"eval_{name}_seconds"] = seconds
    result[f"eval_{name}_sequences_per_second"] = num_sequences / seconds
  return result


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
  configs = [_CONFIG.value]
  if _AIR_CONFIG.value is not None:
    configs.append(_AIR_CONFIG.value)
  for index, base in enumerate(configs):
    variants = [(spec, net) for spec in _ESTIMATORS.value
                for net in (_GLIMPSE_NETS.value or [None])]
    for spec, net in variants:
      estimator, k = spec.split(":")
      config = base.copy_and_resolve_references()
      config.estimator, config.num_samples = estimator, int(k)
      if net is not None:
        config.model.glimpse_net = net
      run = benchmark_training(
          config, _STEPS.value, _REPEATS.value,
          _PARAMS_FROM.value if index == 0 else "")
      run["peak_rss_mb"] = _peak_rss_mb()
      run["device_peak_mb"] = _device_peak_mb(jax)
      report["runs"].append(run)
      print(f"{config.model_name} {estimator} K={k} "
            f"glimpse_net={run['glimpse_net']} "
            f"({run['glimpse_net_params']:,} of {run['num_params']:,} "
            f"parameters): "
            f"{run['images_per_second']:.1f} {run['unit']}/s, "
            f"{run['frame_samples_per_second']:.0f} frame-samples/s, "
            f"compile {run['compile_seconds']:.1f} s, "
            f"peak RSS {run['peak_rss_mb']:.0f} MB" + (
                f", first stage ({run['first_stage_frames']} frames) "
                f"{run['first_stage_sequences_per_second']:.1f} sequences/s"
                if run.get("first_stage_sequences_per_second") else "") + (
                f", compile share of a run {run['compile_share']:.1%}"
                if "compile_share" in run else ""), flush=True)
  if _EVAL.value:
    report["evaluation"] = benchmark_evaluation(
        _CONFIG.value, _EVAL_SEQUENCES.value, _EVAL_BEST_OF.value,
        _PARAMS_FROM.value)
    report["evaluation"]["peak_rss_mb"] = _peak_rss_mb()
    for key, value in report["evaluation"].items():
      print(f"{key}: {value:.2f}" if isinstance(value, float) else
            f"{key}: {value}", flush=True)
  if _GLIMPSE.value:
    report["glimpse"] = benchmark_glimpses(_CONFIG.value)
    for key, value in report["glimpse"].items():
      print(f"{key}: {value:.3f}", flush=True)
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
