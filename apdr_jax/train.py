"""Training: `train_and_evaluate(config, workdir)` and its pure update step.

The update step is one jitted function of `(state, train_images, base_key)` that
donates `state`: it draws its batch on device from the training scenes with
`fold_in(base_key, step)`, so there is no host round-trip inside the loop, and
it compiles once (tested with `chex.assert_max_traces`). The host touches the
device only on logging, evaluation and checkpoint steps.
"""

import dataclasses
import os
import time
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from apdr_jax import air
from apdr_jax import checkpoints
from apdr_jax import data
from apdr_jax import evaluation
from apdr_jax import metrics_log
from apdr_jax import objectives
from apdr_jax import parallel
from apdr_jax import plotting
from apdr_jax.errors import ApdrError, ConfigError

ESTIMATORS = ("nvil", "vimco")


class NonFiniteLossError(ApdrError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, all arrays (one checkpoint pytree).

  Attributes:
    step: scalar int32, steps taken.
    params: model parameters (`AIRNetworks`, including the NVIL baseline).
    opt_state: optax state.
    nvil: NVIL's running statistics.
    nonfinite_step: scalar int32, the first step whose loss or gradient was not
      finite (that step's update is skipped), or -1.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  nvil: objectives.NVILState
  nonfinite_step: jax.Array


def model_config(config: ml_collections.ConfigDict) -> air.AIRConfig:
  """The `AIRConfig` of a run config (canvas size comes from the data)."""
  fields = {f.name for f in dataclasses.fields(air.AIRConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ConfigError(f"unknown config.model fields: {sorted(unknown)}; "
                      f"known: {sorted(fields)}")
  return air.AIRConfig(canvas_size=config.data.canvas_size,
                       **config.model.to_dict())


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad value."""
  def need(ok, message):
    if not ok:
      raise ConfigError(message)
  need(config.estimator in ESTIMATORS,
       f"estimator={config.estimator!r}; use one of {ESTIMATORS}")
  need(config.num_samples >= 1, f"num_samples={config.num_samples} must be >= 1")
  need(config.estimator != "vimco" or config.num_samples >= 2,
       f"estimator='vimco' needs num_samples >= 2, got {config.num_samples}")
  for key in ("batch_size", "num_steps", "log_every", "eval_every",
              "checkpoint_every", "eval_batch_size"):
    need(config[key] >= 1, f"{key}={config[key]} must be >= 1")
  for key in ("learning_rate", "baseline_learning_rate", "grad_clip_norm"):
    need(config[key] > 0, f"{key}={config[key]} must be > 0")
  need(0 < config.rho_end <= 1 and 0 < config.rho_start <= 1,
       f"rho_start={config.rho_start} and rho_end={config.rho_end} must be in (0, 1]")
  m = config.model
  need(m.num_slots >= 1, f"model.num_slots={m.num_slots} must be >= 1")
  need(m.likelihood_std > 0, f"model.likelihood_std={m.likelihood_std} must be > 0")
  need(0 < m.presence_init < 1,
       f"model.presence_init={m.presence_init} must be in (0, 1)")
  for key in ("extract_method", "render_method"):
    need(m[key] in ("gather", "separable"),
         f"model.{key}={m[key]!r}; use 'gather' or 'separable'")
  model_config(config)


def _is_baseline(path) -> bool:
  return getattr(path[0], "key", None) == "baseline"


def scale_by_group_rate(learning_rate: float,
                        baseline_learning_rate: float
                        ) -> optax.GradientTransformation:
  """`-rate * update`, with its own rate for the NVIL baseline's parameters."""
  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: -(baseline_learning_rate if _is_baseline(path)
                          else learning_rate) * u, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def clip_by_group_norm(grads, max_norm: float):
  """Clips the model's and the baseline's gradients to `max_norm` separately.

  The baseline regresses a learning signal of hundreds of nats, so its
  gradients are large; clipping it apart keeps it from shrinking the model's.

  Returns:
    (clipped grads, model grad norm, baseline grad norm).
  """
  model = {k: v for k, v in grads.items() if k != "baseline"}
  norms = (optax.tree.norm(model), optax.tree.norm(grads["baseline"]))
  factors = [jnp.minimum(1.0, max_norm / (n + 1e-12)) for n in norms]
  clipped = jax.tree_util.tree_map_with_path(
      lambda path, g: g * factors[1 if _is_baseline(path) else 0], grads)
  return clipped, norms[0], norms[1]


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam, with the NVIL baseline at its own learning rate (clipping is in
  `clip_by_group_norm`, applied by the update step)."""
  return optax.chain(optax.scale_by_adam(),
                     scale_by_group_rate(config.learning_rate,
                                         config.baseline_learning_rate))


def create_train_state(config, rng: jax.Array) -> TrainState:
  params = air.init_params(model_config(config), rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=make_optimizer(config).init(params),
      nvil=objectives.nvil_init(config.model.num_slots + 1),
      nonfinite_step=jnp.full((), -1, jnp.int32))


def rho_at(config, step):
  return air.presence_rho(step, config.rho_start, config.rho_end,
                          config.rho_anneal_steps)


def loss_and_metrics(config, params, nvil_state, images, rng, rho):
  """The surrogate loss for one batch and the scalars to log.

  Args:
    config: run config.
    params: model parameters.
    nvil_state: NVIL running statistics.
    images: `[batch, H, W]` float32 in [0, 1].
    rng: key for the `K` samples.
    rho: scalar presence prior.

  Returns:
    `(loss, (new_nvil_state, metrics))`.
  """
  mc = model_config(config)
  k, batch = config.num_samples, images.shape[0]
  # The K samples are folded into the batch rather than vmapped: XLA's CPU
  # backend runs the resulting plain matmuls much faster than batched ones
  # (measured in WORKSPACE.md). The image gates and the first LSTM state
  # depend on the image alone: computed once, shared by the K samples.
  gates = air.image_gates(mc, params, images)
  first_state = air.first_lstm_state(mc, params, gates)  # image-only, shared
  tile = lambda x: jnp.broadcast_to(x[None], (k,) + x.shape).reshape(
      (k * batch,) + x.shape[1:])
  out = air.log_weight_terms(mc, params, tile(images), rng, rho,
                             image_gates=tile(gates),
                             first_state=jax.tree.map(tile, first_state))
  out = jax.tree.map(lambda x: x.reshape((k, batch) + x.shape[1:]), out)
  if config.estimator == "vimco":
    surrogate = objectives.vimco(out.terms, out.score_log_q, nvil_state)
  else:
    surrogate = objectives.nvil(out.terms, out.score_log_q, out.baseline,
                                nvil_state, config.nvil_decay,
                                config.nvil_normalise)
  metrics = dict(
      loss=surrogate.loss, bound=surrogate.bound, elbo=surrogate.elbo,
      log_likelihood=out.log_likelihood.mean(), kl=out.kl.mean(),
      baseline_loss=surrogate.baseline_loss,
      mean_count=out.slots.presence.sum(-1).mean(), rho=rho)
  return surrogate.loss, (surrogate.nvil_state, metrics)


def make_update_step(config, mesh, max_traces: int | None = None):
  """The jitted, state-donating update step.

  Args:
    config: run config.
    mesh: the device mesh.
    max_traces: if set, `chex.assert_max_traces` fails on a retrace beyond it
      (tests use 1 to prove that the loop never recompiles).

  Returns:
    `update(state, train_streams, base_key) -> (state, metrics)`, with
    `train_streams [num // B, B, H, W]` uint8 from `place_train_streams`.
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
        train_images, index).astype(jnp.float32) / 255.0
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    rho = rho_at(config, state.step)
    grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
    (loss, (nvil, metrics)), grads = grad_fn(config, state.params, state.nvil,
                                            images, sample_key, rho)
    grads, grad_norm, baseline_grad_norm = clip_by_group_norm(
        grads, config.grad_clip_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
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


def place_train_streams(images: np.ndarray, batch_size: int, mesh):
  """Places training scenes as `B` streams split over the `data` axis.

  Row `r` of the scenes goes to stream `r % B` (rows beyond a multiple of `B`
  are dropped), and batch position `j` always draws from stream `j`. The
  device that holds batch positions `j` therefore holds stream `j`, so drawing
  a batch moves no data between devices, and the batch is the same whatever
  the number of devices or hosts. Each process places only the streams of its
  own devices.

  Args:
    images: `[num, H, W]` uint8.
    batch_size: the global batch size `B`.
    mesh: the device mesh.

  Returns:
    A global `[num // B, B, H, W]` array sharded on axis 1.
  """
  rows = (len(images) // batch_size) * batch_size
  if rows == 0:
    raise ConfigError(f"{len(images)} training scenes are fewer than "
                      f"batch_size={batch_size}")
  streams = images[:rows].reshape((rows // batch_size, batch_size) +
                                  images.shape[1:])
  sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  return jax.make_array_from_callback(streams.shape, sharding,
                                      lambda index: streams[index])


def load_data(config):
  """Training images (uint8) and held-out scenes of a run config."""
  d = config.data
  common = dict(canvas_size=d.canvas_size, min_digits=d.min_digits,
                max_digits=d.max_digits, overlap=d.overlap, max_iou=d.max_iou,
                source=d.source, seed=d.seed)
  cache_dir = d.cache_dir or None
  train = data.load_scenes(data.SceneRecipe(
      num_scenes=d.num_train_scenes, split="train", **common), cache_dir)
  test = data.load_scenes(data.SceneRecipe(
      num_scenes=d.num_test_scenes, split="test", **common), cache_dir)
  return train, test


def _host(params):
  """Parameters as host arrays, so that evaluation runs on this process's
  default device whatever mesh (or hosts) the training state spans."""
  return jax.device_get(params)


def _evaluate_counts(config, params, test) -> dict:
  result = evaluation.decompose(model_config(config), _host(params),
                                data.to_float(test["images"]),
                                config.eval_batch_size)
  return evaluation.count_accuracy(result["counts"], test["counts"])


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
  validate_config(config)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_divides(config.batch_size, mesh)
  is_writer = jax.process_index() == 0
  train, test = load_data(config)

  replicated = parallel.replicated(mesh)
  base_key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(base_key)
  state = jax.device_put(create_train_state(config, init_key), replicated)
  mngr = checkpoints.manager(workdir)
  restored_step, restored = checkpoints.restore_latest(mngr, state)
  if restored is not None:
    state = restored
    print(f"Resumed from {workdir} at step {restored_step}.", flush=True)
  if is_writer:
    checkpoints.save_config(config, workdir)
  train_images = place_train_streams(train["images"], config.batch_size, mesh)

  update = make_update_step(config, mesh)
  writer = metrics_log.MetricWriter(workdir, enabled=is_writer)
  start_step = int(state.step)
  progress = _progress_bar(config, start_step, is_writer)
  last_time, last_step = time.perf_counter(), start_step
  compile_time = None
  postfix = {}  # the progress bar keeps the last held-out accuracy
  try:
    for step in range(start_step + 1, config.num_steps + 1):
      state, metrics = update(state, train_images, train_key)
      if compile_time is None:
        jax.block_until_ready(state.step)
        compile_time = time.perf_counter() - last_time
        last_time, last_step = time.perf_counter(), step
      if progress is not None:
        progress.update(1)
      if step % config.log_every == 0 or step == config.num_steps:
        _check_finite(state, step)
        scalars = jax.device_get(metrics)
        now = time.perf_counter()
        if step > last_step:
          scalars["images_per_second"] = (
              (step - last_step) * config.batch_size / (now - last_time))
        last_time, last_step = now, step
        if step % config.eval_every == 0 or step == config.num_steps:
          scalars.update(_evaluate_counts(config, state.params, test))
          last_time = time.perf_counter()  # evaluation is not training time
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
  _check_finite(state, config.num_steps)
  if compile_time is not None and is_writer:
    print(f"First step (compile) took {compile_time:.1f} s.", flush=True)
  return final_evaluation(config, state.params, test, workdir, is_writer,
                          extra={"steps": int(state.step),
                                 "compile_seconds": compile_time,
                                 "train_seconds": time.perf_counter() - started})


def final_evaluation(config, params, test, workdir, is_writer=True,
                     extra=None) -> dict:
  """Counts, ELBO and IWAE on held-out scenes, a picture, `final_metrics.json`.

  `extra` (e.g. steps and wall time of this invocation) is added to the file.
  """
  mc = model_config(config)
  params = _host(params)
  num = min(config.final_eval_scenes, len(test["images"]))
  images = data.to_float(test["images"][:num])
  decomposed = evaluation.decompose(mc, params, images, config.eval_batch_size)
  result = evaluation.count_accuracy(decomposed["counts"], test["counts"][:num])
  result.update(evaluation.bounds(
      mc, params, images, jax.random.key(config.seed + 1),
      rho=float(rho_at(config, config.num_steps)),
      num_samples=config.final_iwae_samples))
  result["num_scenes"] = num
  result.update(extra or {})
  if is_writer:
    import json
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
    plotting.save_reconstructions(
        os.path.join(workdir, "reconstructions.png"), images[:16],
        decomposed["reconstructions"][:16], decomposed["boxes"][:16],
        decomposed["presence"][:16])
  return result


def _progress_bar(config, start_step, enabled):
  if not (config.progress_bar and enabled):
    return None
  from tqdm import tqdm
  return tqdm(total=config.num_steps, initial=start_step, unit="step",
              dynamic_ncols=True, mininterval=2.0)
