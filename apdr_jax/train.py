"""Training: `train_and_evaluate(config, workdir)` and its pure update step.

The update step is one jitted function of `(state, train_images, base_key)` that
donates `state`: it draws its batch on device from the training scenes with
`fold_in(base_key, step)`, so there is no host round-trip inside the loop, and
it compiles once (tested with `chex.assert_max_traces`). The host touches the
device only on logging, evaluation and checkpoint steps.
"""

import os
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from apdr_jax import checkpoints
from apdr_jax import faults
from apdr_jax import input_pipeline
from apdr_jax import metrics_log
from apdr_jax import parallel
from apdr_jax import run_config
from apdr_jax import run_evaluation
from apdr_jax import workdir as workdir_lib
from apdr_jax.errors import ApdrError
from apdr_jax.grafting import init_from_air_workdir
from apdr_jax.losses import loss_and_metrics
from apdr_jax.optimizer import clip_by_group_norm
from apdr_jax.optimizer import make_optimizer
from apdr_jax.train_state import TrainState
from apdr_jax.train_state import create_train_state



class NonFiniteLossError(ApdrError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


def make_update_step(config, mesh, max_traces: int | None = None,
                     num_frames: int | None = None):
  """The jitted, state-donating update step.

  Args:
    config: run config.
    mesh: the device mesh.
    max_traces: if set, `chex.assert_max_traces` fails on a retrace beyond it
      (tests use 1 to prove that the loop never recompiles).

    num_frames: for sequences, always train on the first `num_frames`
      frames; when None, the curriculum's stage at the state's step
      (`run_config.num_frames_at`, a traced value: one compile serves every
      stage).

  Returns:
    `update(state, train_streams, base_key) -> (state, metrics)`, with
    `train_streams [num // B, B, ...]` uint8 from `place_train_streams`
    (`...` is `H, W` for scenes and `T, H, W` for sequences).
  """
  optimizer = make_optimizer(config)
  batch_sharding = parallel.batch_sharded(mesh)

  def update(state: TrainState, train_images, base_key):
    key = jax.random.fold_in(base_key, state.step)
    data_key, sample_key = jax.random.split(key)
    # Batch position j draws a row of stream j (see `place_train_streams`):
    # a batched gather along the stream axis, which stays on each device.
    index = jax.random.randint(data_key, (config.batch_size,), 0,
                               train_images.shape[0])
    images = jax.vmap(lambda stream, i: stream[i], in_axes=(1, 0))(
        train_images, index)
    frames = None
    if run_config.is_sequential(config):
      frames = (run_config.num_frames_at(config, state.step)
                if num_frames is None else jnp.asarray(num_frames, jnp.int32))
    images = images.astype(jnp.float32) / 255.0
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    rho = run_config.rho_at(config, state.step)
    temperature = run_config.temperature_at(config, state.step)
    # APDR's warm-up: objects may not be forgotten until tracking is learnt.
    min_survival = jnp.where(
        state.step < config.get("survival_warmup_steps", 0), 0.999, 0.0)
    if not run_config.is_sequential(config):
      # AIR's: objects are drawn often enough for the decoder to learn the
      # digits before presence is decided on them (backgrounds).
      min_survival = jnp.where(
          state.step < config.get("presence_warmup_steps", 0),
          config.get("presence_warmup_floor", 0.5), 0.0)
    background_detail = None
    if (config.model.get("background", "none") != "none"
        and config.get("background_warmup_steps", 0)):
      # A flat background (its spatial mean) until the objects have learnt
      # the digits; the whole background after.
      background_detail = (state.step >= config.background_warmup_steps
                           ).astype(jnp.float32)
    grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
    (loss, (nvil, metrics)), grads = grad_fn(config, state.params, state.nvil,
                                            images, sample_key, rho,
                                            min_survival, frames, temperature,
                                            background_detail)
    with jax.named_scope("optimizer"):
      grads, grad_norm, baseline_grad_norm = clip_by_group_norm(
          grads, config.grad_clip_norm)
      updates, opt_state = optimizer.update(grads, state.opt_state,
                                            state.params)
      params = optax.apply_updates(state.params, updates)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) &
              jnp.isfinite(baseline_grad_norm))
    # The host checks this flag at every log and checkpoint step and stops
    # before saving, so the last checkpoint on disk is the last good state.
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, nvil=nvil,
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite,
                                 state.step, state.nonfinite_step))
    metrics.update(grad_norm=grad_norm, baseline_grad_norm=baseline_grad_norm)
    return new_state, metrics

  if max_traces is not None:
    update = chex.assert_max_traces(update, n=max_traces)
  replicated = parallel.replicated(mesh)
  return jax.jit(update, donate_argnums=0,
                 out_shardings=(replicated, replicated))


def _check_finite(state: TrainState, step: int):
  bad = int(state.nonfinite_step)
  if bad >= 0:
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad}; stopped before applying "
        "it. The last good checkpoint is kept; lower learning_rate or "
        "grad_clip_norm, or look at the inputs.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it has a checkpoint) and evaluates.

  Args:
    config: a run config (see `configs/default.py`).
    workdir: where checkpoints, metrics, pictures and `config.json` go.

  Returns:
    The final evaluation metrics.
  """
  started = time.perf_counter()
  run_config.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_divides(config.batch_size, mesh)
  is_writer = jax.process_index() == 0
  # One run per workdir: a second one is refused before it reads or writes.
  with workdir_lib.lock(workdir, enabled=is_writer):
    return _train_and_evaluate(config, workdir, mesh, is_writer, started)


def _train_and_evaluate(config, workdir, mesh, is_writer, started) -> dict:
  train, test = input_pipeline.load_data(config)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  mngr = checkpoints.manager(workdir)
  state = _initial_state(config, workdir, mesh, mngr, init_key)
  if is_writer:
    checkpoints.save_config(config, workdir)
  train_images = input_pipeline.place_train_streams(
      input_pipeline.training_images(config, train), config.batch_size, mesh)

  # One compiled step for the whole run: a curriculum stage is a value of
  # the step counter inside it, not a shape.
  update_step = make_update_step(config, mesh)
  if jax.process_count() > 1:
    # Compile first, then start together: a process whose peers are still
    # compiling would otherwise time out in its first collective.
    update_step = update_step.lower(state, train_images, train_key).compile()
    parallel.barrier("apdr_jax/compiled")
  state, compile_time = _train_loop(config, workdir, mngr, state, update_step,
                                    train_images, train_key, test, is_writer)
  _check_finite(state, config.num_steps)
  if compile_time is not None and is_writer:
    print(f"First step (compile) took {compile_time:.1f} s.", flush=True)
  extra = {"steps": int(state.step), "compile_seconds": compile_time,
           "train_seconds": time.perf_counter() - started}
  result = extra  # process 0 evaluates and writes (see above)
  if is_writer:
    result = run_evaluation.final_evaluation(config, state.params, test,
                                             workdir, is_writer, extra=extra)
  # The others wait here, so that none shuts the distributed runtime down
  # while process 0 is still evaluating.
  parallel.barrier("apdr_jax/final_evaluation")
  return result


def _initial_state(config, workdir: str, mesh, mngr, init_key) -> TrainState:
  """The newest checkpoint's state, else a graft of `init_air_from`, else a
  fresh initialisation; replicated over `mesh`."""
  replicated = parallel.replicated(mesh)
  state = jax.device_put(create_train_state(config, init_key), replicated)
  if mngr.all_steps() and os.path.exists(checkpoints.config_path(workdir)):
    workdir_lib.check_resumable(checkpoints.load_config(workdir), config,
                                workdir)
  # Several processes must not move the same folder; one reports instead.
  restored_step, restored = checkpoints.restore_latest(
      mngr, state, set_aside_damaged=jax.process_count() == 1)
  if restored is not None:
    print(f"Resumed from {workdir} at step {restored_step}.", flush=True)
    return restored
  if config.get("init_air_from"):
    return jax.device_put(
        init_from_air_workdir(config, state, config.init_air_from), replicated)
  return state


class _Throughput:
  """Training images per second between logged steps (evaluation excluded)."""

  def __init__(self, step: int):
    self.time, self.step = time.perf_counter(), step

  def restart(self, step: int | None = None) -> None:
    self.time = time.perf_counter()
    self.step = self.step if step is None else step

  def images_per_second(self, step: int, batch_size: int) -> float | None:
    now = time.perf_counter()
    rate = ((step - self.step) * batch_size / (now - self.time)
            if step > self.step else None)
    self.time, self.step = now, step
    return rate


def _train_loop(config, workdir, mngr, state, update_step, train_images,
                train_key, test, is_writer):
  """Steps from `state.step + 1` to `num_steps`: logs, evaluates, saves.

  Returns:
    `(state, compile_time)`: the last state and the first step's seconds
    (None if no step ran).
  """
  start_step = int(state.step)
  writer = metrics_log.MetricWriter(workdir, enabled=is_writer,
                                    start_step=start_step)
  progress = _progress_bar(config, start_step, is_writer)
  throughput = _Throughput(start_step)
  compile_time = None
  postfix = {}  # the progress bar keeps the last held-out accuracy
  try:
    for step in range(start_step + 1, config.num_steps + 1):
      state, metrics = update_step(state, train_images, train_key)
      faults.kill_point("after_update", step)
      if compile_time is None:
        jax.block_until_ready(state.step)
        compile_time = time.perf_counter() - throughput.time
        throughput.restart(step)
      if progress is not None:
        progress.update(1)
      if step % config.log_every == 0 or step == config.num_steps:
        scalars = _log_scalars(config, step, state, metrics, test, throughput,
                               is_writer)
        writer.write(step, scalars)
        if progress is not None:
          postfix["elbo"] = f"{scalars['elbo']:.1f}"
          if "count_accuracy" in scalars:
            postfix["held_out_acc"] = f"{scalars['count_accuracy']:.3f}"
          progress.set_postfix(postfix, refresh=False)
      if step % config.checkpoint_every == 0 or step == config.num_steps:
        _check_finite(state, step)
        checkpoints.save(mngr, step, state)
  finally:
    if progress is not None:
      progress.close()
    writer.close()
  return state, compile_time


def _log_scalars(config, step, state, metrics, test, throughput: _Throughput,
                 is_writer: bool) -> dict:
  """A logged step's scalars: the step's metrics, images/s and, at an
  evaluation step, the held-out counts."""
  _check_finite(state, step)
  scalars = jax.device_get(metrics)
  rate = throughput.images_per_second(step, config.batch_size)
  if rate is not None:
    scalars["images_per_second"] = rate
  # Evaluation runs on host copies of the parameters and needs no other
  # process, so only process 0 (which writes it) spends time on it.
  evaluate_now = step % config.eval_every == 0 or step == config.num_steps
  if is_writer and evaluate_now:
    scalars.update(run_evaluation.evaluate_counts(config, state.params, test))
  if evaluate_now:  # the other processes wait here for process 0
    parallel.barrier(f"apdr_jax/evaluated/{step}")
    throughput.restart()  # evaluation is not training time
  return scalars


def _progress_bar(config, start_step, enabled):
  if not (config.progress_bar and enabled):
    return None
  from tqdm import tqdm
  return tqdm(total=config.num_steps, initial=start_step, unit="step",
              dynamic_ncols=True, mininterval=2.0)
