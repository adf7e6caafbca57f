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
from apdr_jax import apdr
from apdr_jax import checkpoints
from apdr_jax import data
from apdr_jax import evaluation
from apdr_jax import glimpse
from apdr_jax import metrics_log
from apdr_jax import objectives
from apdr_jax import parallel
from apdr_jax import plotting
from apdr_jax import sequence_evaluation
from apdr_jax.errors import ApdrError, CheckpointError, ConfigError

ESTIMATORS = ("nvil", "vimco")
MODELS = ("air", "apdr")
DATA_KINDS = ("scenes", "sequences")


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


def model_config(config: ml_collections.ConfigDict):
  """The model's config: `AIRConfig`, or `APDRConfig` when model_name='apdr'.

  The canvas size comes from the data; APDR's discovery is AIR with the
  relation state as its context.
  """
  fields = {f.name for f in dataclasses.fields(air.AIRConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ConfigError(f"unknown config.model fields: {sorted(unknown)}; "
                      f"known: {sorted(fields)}")
  model = config.model.to_dict()
  if config.model_name != "apdr":
    return air.AIRConfig(canvas_size=config.data.canvas_size, **model)
  extra = config.get("apdr", ml_collections.ConfigDict()).to_dict()
  known = {f.name for f in dataclasses.fields(apdr.APDRConfig)} - {"air"}
  if set(extra) - known:
    raise ConfigError(f"unknown config.apdr fields: {sorted(set(extra) - known)}"
                      f"; known: {sorted(known)}")
  relation = extra.get("relation_size", apdr.APDRConfig.relation_size)
  model["context_dim"] = relation
  return apdr.APDRConfig(
      air=air.AIRConfig(canvas_size=config.data.canvas_size, **model), **extra)


def is_sequential(config) -> bool:
  return config.model_name == "apdr"


def num_frames_at(config, step: int) -> int:
  """Frames per training sequence at `step` (the curriculum on length).

  Starts at `curriculum_start_frames` and adds one frame every
  `curriculum_steps_per_frame` steps, up to the data's `num_frames`; 0 for
  static scenes.
  """
  if config.data.kind != "sequences":
    return 0
  total = config.data.num_frames
  start = config.get("curriculum_start_frames", 0)
  every = config.get("curriculum_steps_per_frame", 0)
  if start <= 0 or every <= 0:
    return total
  return int(min(total, start + step // every))


def num_terms(config) -> int:
  """Columns of the log-weight terms (the NVIL statistics' length)."""
  if is_sequential(config):
    return config.data.num_frames * (2 * config.model.num_slots + 1)
  return config.model.num_slots + 1


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad value."""
  def need(ok, message):
    if not ok:
      raise ConfigError(message)
  need(config.model_name in MODELS,
       f"model_name={config.model_name!r}; use one of {MODELS}")
  need(config.data.get("kind", "scenes") in DATA_KINDS,
       f"data.kind={config.data.get('kind')!r}; use one of {DATA_KINDS}")
  need(not is_sequential(config) or config.data.kind == "sequences",
       "model_name='apdr' needs data.kind='sequences'")
  if config.data.get("kind") == "sequences":
    need(config.data.num_frames >= 1,
         f"data.num_frames={config.data.num_frames} must be >= 1")
    need(config.get("curriculum_start_frames", 0) >= 0 and
         config.get("curriculum_steps_per_frame", 0) >= 0,
         "curriculum_start_frames and curriculum_steps_per_frame must be >= 0")
  need(not config.get("init_air_from") or is_sequential(config),
       "init_air_from (an AIR workdir) only applies to model_name='apdr'")
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
  """NVIL baseline parameters: AIR's `baseline`, APDR's `prop_baseline`."""
  return any(str(getattr(p, "key", "")).endswith("baseline") for p in path)


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
  is_baseline = jax.tree_util.tree_map_with_path(
      lambda path, _: _is_baseline(path), grads)
  leaves = jax.tree.leaves(grads)
  flags = jax.tree.leaves(is_baseline)
  squares = [jnp.sum(g ** 2) for g in leaves]
  norms = (jnp.sqrt(sum(q for q, b in zip(squares, flags) if not b)),
           jnp.sqrt(sum((q for q, b in zip(squares, flags) if b),
                        jnp.zeros(()))))
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
  mc = model_config(config)
  params = (apdr.init_params(mc, rng) if is_sequential(config)
            else air.init_params(mc, rng))
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=make_optimizer(config).init(params),
      nvil=objectives.nvil_init(num_terms(config)),
      nonfinite_step=jnp.full((), -1, jnp.int32))


def graft_air_params(apdr_params, air_params):
  """APDR parameters whose discovery and decoder (`apdr_params["air"]`) are a
  trained AIR's.

  AIR's inference LSTM has no context input; the rows of its latent kernel
  that APDR adds for the context (the relation state) start at zero, so the
  grafted discovery behaves exactly like the AIR it came from until training
  teaches it to use the context.

  Raises:
    ConfigError: if an architecture field differs (a shape does not match).
  """
  target = apdr_params["air"]

  def graft(path, new, old):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    old = jnp.asarray(old)
    if name == "rnn/latent/kernel" and old.shape[0] < new.shape[0]:
      old = jnp.concatenate([old, jnp.zeros((new.shape[0] - old.shape[0],) +
                                            old.shape[1:], old.dtype)])
    if old.shape != new.shape:
      raise ConfigError(f"init_air_from: AIR parameter {name} has shape "
                        f"{old.shape}, APDR's discovery needs {new.shape}; "
                        "use the same config.model fields for both")
    return old

  try:
    grafted = jax.tree_util.tree_map_with_path(graft, target, air_params)
  except ValueError as e:  # different tree structure
    raise ConfigError(f"init_air_from: the AIR parameters do not fit APDR's "
                      f"discovery ({e})") from e
  return dict(apdr_params, air=grafted)


def init_from_air_workdir(config, state: TrainState, workdir: str):
  """`state` with APDR's discovery and decoder from the AIR run in `workdir`
  (its newest checkpoint) and a fresh optimiser state."""
  air_config = checkpoints.load_config(workdir)
  if is_sequential(air_config):
    raise ConfigError(f"init_air_from={workdir!r} is an APDR run; give an "
                      "AIR workdir")
  target = create_train_state(air_config, jax.random.key(0))
  step, restored = checkpoints.restore_latest(checkpoints.manager(workdir),
                                              target)
  if restored is None:
    raise CheckpointError(
        f"init_air_from: no checkpoint under {workdir}/checkpoints")
  params = graft_air_params(jax.device_get(state.params),
                            jax.device_get(restored.params))
  print(f"Discovery and decoder initialised from {workdir} (AIR, step {step}).",
        flush=True)
  return state.replace(params=params,
                       opt_state=make_optimizer(config).init(params))


def rho_at(config, step):
  return air.presence_rho(step, config.rho_start, config.rho_end,
                          config.rho_anneal_steps)


def loss_and_metrics(config, params, nvil_state, images, rng, rho,
                     min_survival=0.0):
  """The surrogate loss for one batch and the scalars to log.

  Args:
    config: run config.
    params: model parameters.
    nvil_state: NVIL running statistics.
    images: `[batch, H, W]` float32 in [0, 1].
    rng: key for the `K` samples.
    rho: scalar presence prior.
    min_survival: APDR only, the floor on q's survival probability.

  Returns:
    `(loss, (new_nvil_state, metrics))`.
  """
  if is_sequential(config):
    return _apdr_loss_and_metrics(config, params, nvil_state, images, rng, rho,
                                  min_survival)
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
  surrogate = _surrogate(config, out, nvil_state)
  metrics = dict(
      loss=surrogate.loss, bound=surrogate.bound, elbo=surrogate.elbo,
      log_likelihood=out.log_likelihood.mean(), kl=out.kl.mean(),
      baseline_loss=surrogate.baseline_loss,
      mean_count=out.slots.presence.sum(-1).mean(), rho=rho)
  return surrogate.loss, (surrogate.nvil_state, metrics)


def _surrogate(config, out, nvil_state) -> objectives.Surrogate:
  """The configured estimator on `out.terms [K, B, S]` (and its kin)."""
  if config.estimator == "vimco":
    return objectives.vimco(out.terms, out.score_log_q, nvil_state)
  return objectives.nvil(out.terms, out.score_log_q, out.baseline,
                         nvil_state, config.nvil_decay, config.nvil_normalise)


def _apdr_loss_and_metrics(config, params, nvil_state, sequences, rng, rho,
                           min_survival):
  """`loss_and_metrics` for APDR on `sequences [batch, T, H, W]`.

  The terms of a `T`-frame curriculum stage are padded with zero columns to
  the full length, so the NVIL statistics keep one shape (a zero column has
  no score and does not change the earlier columns' signals).
  """
  mc = model_config(config)
  k, batch = config.num_samples, sequences.shape[0]
  # Shared by the K samples (empty when discovery reads the residual).
  gates = apdr.image_gates(mc, params, sequences)
  tile = lambda x: jnp.broadcast_to(x[None], (k,) + x.shape).reshape(
      (k * batch,) + x.shape[1:])
  out = apdr.log_weight_terms(mc, params, tile(sequences), rng, rho,
                              gates=tile(gates), min_survival=min_survival)
  out = jax.tree.map(lambda x: x.reshape((k, batch) + x.shape[1:]), out)
  pad = num_terms(config) - out.terms.shape[-1]
  widen = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pad)))
  out = out._replace(terms=widen(out.terms), score_log_q=widen(out.score_log_q),
                     baseline=widen(out.baseline))
  surrogate = _surrogate(config, out, nvil_state)
  frames = out.frames
  metrics = dict(
      loss=surrogate.loss, bound=surrogate.bound, elbo=surrogate.elbo,
      log_likelihood=out.log_likelihood.mean(), kl=out.kl.mean(),
      baseline_loss=surrogate.baseline_loss,
      mean_count=frames.presence.sum(-1).mean(),
      mean_propagated=frames.num_propagated.mean(),
      mean_discovered=frames.num_discovered.mean(), rho=rho,
      num_frames=jnp.asarray(sequences.shape[1], jnp.float32))
  return surrogate.loss, (surrogate.nvil_state, metrics)


def make_update_step(config, mesh, max_traces: int | None = None,
                     num_frames: int | None = None):
  """The jitted, state-donating update step.

  Args:
    config: run config.
    mesh: the device mesh.
    max_traces: if set, `chex.assert_max_traces` fails on a retrace beyond it
      (tests use 1 to prove that the loop never recompiles).

    num_frames: for sequences, train on the first `num_frames` frames (a
      curriculum stage; each stage compiles once); all frames when None.

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
    if num_frames is not None and is_sequential(config):
      images = images[:, :num_frames]
    images = images.astype(jnp.float32) / 255.0
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    rho = rho_at(config, state.step)
    # APDR's warm-up: objects may not be forgotten until tracking is learnt.
    min_survival = jnp.where(
        state.step < config.get("survival_warmup_steps", 0), 0.999, 0.0)
    grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
    (loss, (nvil, metrics)), grads = grad_fn(config, state.params, state.nvil,
                                            images, sample_key, rho,
                                            min_survival)
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
  the number of devices or hosts. Each process places, and reads from
  `images`, only the streams of its own devices (a memory-mapped `images`
  is read only there).

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
  placed = set()

  def read(index):
    # With a memory-mapped `images`, only these rows are read from disk.
    placed.update(range(batch_size)[index[1]])
    return np.asarray(streams[index])

  array = jax.make_array_from_callback(streams.shape, sharding, read)
  if jax.process_count() > 1:
    print(f"Process {jax.process_index()} of {jax.process_count()} read "
          f"training streams {sorted(placed)} of {batch_size} "
          f"({len(placed) * streams[:, 0].nbytes / 2**20:.1f} MiB).",
          flush=True)
  return array


def load_data(config):
  """Training and held-out data of a run config (uint8 images, from the cache).

  Returns:
    `(train, test)` dicts (the training arrays are read-only memory maps of
    the cache file): scenes (`images [n, H, W]`, `counts`, `boxes`) or,
    with `data.kind='sequences'`, sequences (`images [n, T, H, W]`,
    `counts [n, T]`, `boxes`, `ids`, `presence`).
  """
  d = config.data
  cache_dir = d.cache_dir or None
  if d.get("kind", "scenes") == "sequences":
    common = dict(canvas_size=d.canvas_size, num_frames=d.num_frames,
                  min_digits=d.min_digits, max_digits=d.max_digits,
                  overlap=d.overlap, source=d.source, seed=d.seed,
                  speed_min=d.speed_min, speed_max=d.speed_max,
                  velocity_noise=d.velocity_noise, enter_leave=d.enter_leave)
    load, recipe, count = (data.load_sequences, data.SequenceRecipe,
                           "num_sequences")
  else:
    common = dict(canvas_size=d.canvas_size, min_digits=d.min_digits,
                  max_digits=d.max_digits, overlap=d.overlap,
                  max_iou=d.max_iou, source=d.source, seed=d.seed)
    load, recipe, count = data.load_scenes, data.SceneRecipe, "num_scenes"
  # The training split is memory-mapped: `place_train_streams` then reads from
  # disk only the rows of this process's streams.
  return tuple(load(recipe(split=split, **{count: num}, **common), cache_dir,
                    mmap=split == "train")
               for split, num in (("train", d.num_train_scenes),
                                  ("test", d.num_test_scenes)))


def training_images(config, train) -> np.ndarray:
  """What the update step draws from: scenes, sequences for APDR, or every
  frame of every sequence for the frame-by-frame AIR baseline."""
  images = train["images"]
  if config.data.get("kind", "scenes") == "sequences" and not is_sequential(
      config):
    images = images.reshape((-1,) + images.shape[2:])
  return images


def _host(params):
  """Parameters as host arrays, so that evaluation runs on this process's
  default device whatever mesh (or hosts) the training state spans."""
  return jax.device_get(params)


def _evaluate_counts(config, params, test) -> dict:
  images = data.to_float(test["images"])
  if config.data.get("kind", "scenes") == "sequences":
    decomposed = sequence_evaluation.decompose(
        model_config(config), _host(params), images)
    result = sequence_evaluation.count_accuracy(decomposed["counts"],
                                                test["counts"])
    result.update(sequence_evaluation.tracking_scores(
        decomposed, test, len(images), with_motmetrics=False))
    result.pop("max_centre_distance")
    # The held-out figure the progress bar shows is the per-frame accuracy.
    result["count_accuracy"] = result["frame_count_accuracy"]
    return result
  result = evaluation.decompose(model_config(config), _host(params), images,
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
  elif config.get("init_air_from"):
    state = jax.device_put(
        init_from_air_workdir(config, state, config.init_air_from), replicated)
  if is_writer:
    checkpoints.save_config(config, workdir)
  train_images = place_train_streams(training_images(config, train),
                                     config.batch_size, mesh)

  # One compiled step per curriculum stage (sequence length); scenes have one.
  updates = {}

  def update(state, images, key, step):
    frames = num_frames_at(config, step - 1)
    if frames not in updates:
      step_fn = make_update_step(config, mesh, num_frames=frames or None)
      if jax.process_count() > 1:
        # Compile first, then start together: a process whose peers are
        # still compiling would otherwise time out in its first collective.
        step_fn = step_fn.lower(state, images, key).compile()
        parallel.barrier(f"apdr_jax/compiled/{frames}/{step}")
      updates[frames] = step_fn
    return updates[frames](state, images, key)

  writer = metrics_log.MetricWriter(workdir, enabled=is_writer)
  start_step = int(state.step)
  progress = _progress_bar(config, start_step, is_writer)
  last_time, last_step = time.perf_counter(), start_step
  compile_time = None
  postfix = {}  # the progress bar keeps the last held-out accuracy
  try:
    for step in range(start_step + 1, config.num_steps + 1):
      state, metrics = update(state, train_images, train_key, step)
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
        # Evaluation runs on host copies of the parameters and needs no
        # other process, so only process 0 (which writes it) spends time on it.
        evaluate_now = (step % config.eval_every == 0 or
                        step == config.num_steps)
        if is_writer and evaluate_now:
          scalars.update(_evaluate_counts(config, state.params, test))
        if evaluate_now:  # the other processes wait here for process 0
          parallel.barrier(f"apdr_jax/evaluated/{step}")
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
  extra = {"steps": int(state.step), "compile_seconds": compile_time,
           "train_seconds": time.perf_counter() - started}
  result = extra  # process 0 evaluates and writes (see above)
  if is_writer:
    result = final_evaluation(config, state.params, test, workdir, is_writer,
                              extra=extra)
  # The others wait here, so that none shuts the distributed runtime down
  # while process 0 is still evaluating.
  parallel.barrier("apdr_jax/final_evaluation")
  return result


def final_evaluation(config, params, test, workdir, is_writer=True,
                     extra=None) -> dict:
  """Counts, ELBO and IWAE on held-out scenes, a picture, `final_metrics.json`.

  `extra` (e.g. steps and wall time of this invocation) is added to the file.
  """
  if config.data.get("kind", "scenes") == "sequences":
    return final_sequence_evaluation(config, params, test, workdir, is_writer,
                                     extra)
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


def evaluate_sequences(config, params, test, num: int, iwae_samples: int,
                       rng: jax.Array, rho: float) -> tuple[dict, dict]:
  """Every held-out sequence metric of DESIGN §6 on the first `num`.

  Returns:
    (metrics dict of plain numbers, the decomposition for pictures).
  """
  mc = model_config(config)
  params = _host(params)
  sequences = data.to_float(test["images"][:num])
  decomposed = sequence_evaluation.decompose(mc, params, sequences)
  result = sequence_evaluation.count_accuracy(decomposed["counts"],
                                              test["counts"][:num])
  result.update(sequence_evaluation.tracking_scores(decomposed, test, num))
  result.update(sequence_evaluation.bounds(mc, params, sequences, rng, rho,
                                           num_samples=iwae_samples))
  if sequence_evaluation.is_apdr(mc) and sequences.shape[1] >= 2:
    observed = max(1, sequences.shape[1] // 2)
    error, predicted = sequence_evaluation.prediction_error(
        mc, params, sequences[:8], observed, jax.random.fold_in(rng, 1), rho)
    result["prediction_mse"] = error
    result["prediction_observed_frames"] = observed
    decomposed["prediction"] = predicted
  result.update(num_sequences=num, iwae_samples=iwae_samples)
  return result, decomposed


def save_sequence_pictures(workdir_or_prefix: str, sequences, decomposed,
                           num: int = 4) -> list[str]:
  """`<prefix>reconstructions.gif` (boxes coloured by id) and, for APDR,
  `<prefix>prediction.gif` (observed frames, then the prior's prediction)."""
  prefix = (os.path.join(workdir_or_prefix, "") if
            os.path.isdir(workdir_or_prefix) else workdir_or_prefix)
  paths = [prefix + "reconstructions.gif"]
  plotting.save_sequence_gif(
      paths[0], sequences[:num], decomposed["reconstructions"][:num],
      decomposed["boxes"][:num], decomposed["presence"][:num],
      decomposed["ids"][:num])
  predicted = decomposed.get("prediction")
  if predicted is not None:
    num = min(num, len(predicted["canvas"]))
    future = predicted["canvas"].shape[1]
    observed = sequences.shape[1] - future
    size = sequences.shape[-1]
    boxes = np.asarray(glimpse.box_corners(jnp.asarray(predicted["z_where"]),
                                           size, size))
    paths.append(prefix + "prediction.gif")
    plotting.save_sequence_gif(
        paths[1], sequences[:num],
        np.concatenate([decomposed["reconstructions"][:num, :observed],
                        predicted["canvas"][:num]], 1),
        np.concatenate([decomposed["boxes"][:num, :observed], boxes[:num]], 1),
        np.concatenate([decomposed["presence"][:num, :observed],
                        predicted["presence"][:num]], 1),
        np.concatenate([decomposed["ids"][:num, :observed],
                        predicted["ids"][:num]], 1))
  return paths


def final_sequence_evaluation(config, params, test, workdir, is_writer=True,
                              extra=None) -> dict:
  """`final_evaluation` for sequences: metrics, GIFs, `final_metrics.json`."""
  num = min(config.final_eval_scenes, len(test["images"]))
  result, decomposed = evaluate_sequences(
      config, params, test, num, config.final_iwae_samples,
      jax.random.key(config.seed + 1),
      float(rho_at(config, config.num_steps)))
  result.update(extra or {})
  if is_writer:
    import json
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
    save_sequence_pictures(workdir, data.to_float(test["images"][:num]),
                           decomposed)
  return result


def _progress_bar(config, start_step, enabled):
  if not (config.progress_bar and enabled):
    return None
  from tqdm import tqdm
  return tqdm(total=config.num_steps, initial=start_step, unit="step",
              dynamic_ncols=True, mininterval=2.0)
