"""The training loss of one batch: the configured estimator's surrogate.

`loss_and_metrics` is what `train.make_update_step` differentiates: it draws
`config.num_samples` samples of q per scene (AIR) or sequence (APDR), forms
their log-weights term by term, and hands them to the estimator of
`config.estimator` (`objectives`, `air_control` for REBAR and RELAX, `fivo`
for APDR's `objective='fivo'`). The scalars it returns are the training
metrics that `launch.train` logs.
"""

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import air_control
from apdr_jax import apdr
from apdr_jax import fivo
from apdr_jax import objectives
from apdr_jax import run_config


def loss_and_metrics(config, params, nvil_state, images, rng, rho,
                     min_survival=0.0, num_frames=None, temperature=None,
                     background_detail=None):
  """The surrogate loss for one batch and the scalars to log.

  Args:
    config: run config.
    params: model parameters.
    nvil_state: NVIL running statistics.
    images: `[batch, H, W]` float32 in [0, 1].
    rng: key for the `K` samples.
    rho: scalar presence prior.
    min_survival: APDR: the floor on q's survival probability; AIR (with
      `presence_warmup_steps`): the floor on q's presence probability.
    num_frames: APDR only, optional int32 scalar: read the first
      `num_frames` frames (a curriculum stage; all when None).
    temperature: AIR with `estimator='concrete'` only: the relaxation's
      temperature (the schedule's start when None).
    background_detail: AIR with a background: 0 during its warm-up (a flat
      background, see `air.infer_background`), 1 after; None: no warm-up.

  Returns:
    `(loss, (new_nvil_state, metrics))`.
  """
  if run_config.is_sequential(config):
    return _apdr_loss_and_metrics(config, params, nvil_state, images, rng, rho,
                                  min_survival, num_frames)
  mc = run_config.model_config(config)
  k, batch = config.num_samples, images.shape[0]
  if config.estimator != "concrete":
    temperature = None
  elif temperature is None:
    temperature = run_config.temperature_at(config, 0)
  # The K samples are folded into the batch rather than vmapped: XLA's CPU
  # backend runs the resulting plain matmuls much faster than batched ones
  # (measured in WORKSPACE.md). The image gates and the first LSTM state
  # depend on the image alone: computed once, shared by the K samples.
  gates = air.image_gates(mc, params, images)
  first_state = air.first_lstm_state(mc, params, gates)  # image-only, shared
  tile = lambda x: jnp.broadcast_to(x[None], (k,) + x.shape).reshape(
      (k * batch,) + x.shape[1:])
  rebar_like = config.estimator in ("rebar", "relax")
  out = air.log_weight_terms(mc, params, tile(images), rng, rho,
                             image_gates=tile(gates),
                             first_state=jax.tree.map(tile, first_state),
                             detach_samples=config.estimator == "rws",
                             temperature=temperature, rebar_noise=rebar_like,
                             min_presence=(min_survival if config.get(
                                 "presence_warmup_steps", 0) else None),
                             background_detail=background_detail)
  if rebar_like:
    control = air_control.controls(
        mc, params, tile(images), out.slots, rho, out.terms,
        config.get("rebar_temperature", 0.5), config.get("rebar_scale", 1.0),
        relax=config.estimator == "relax",
        background=None if mc.background == "none" else out.background)
    surrogate = objectives.rebar(out.terms, out.score_log_q,
                                 _pad_column(control.at_z),
                                 _pad_column(control.at_z_tilde),
                                 control.variance_loss, nvil_state)
  out = jax.tree.map(lambda x: x.reshape((k, batch) + x.shape[1:]), out)
  if not rebar_like:
    surrogate = _surrogate(config, out, nvil_state)
  metrics = dict(
      loss=surrogate.loss, bound=surrogate.bound, elbo=surrogate.elbo,
      log_likelihood=out.log_likelihood.mean(), kl=out.kl.mean(),
      baseline_loss=surrogate.baseline_loss,
      mean_count=out.slots.presence.sum(-1).mean(), rho=rho)
  if temperature is not None:
    metrics.update(temperature=temperature)
  return surrogate.loss, (surrogate.nvil_state, metrics)


def _pad_column(x):
  """`[B, N] -> [B, N + 1]`: no decision in the likelihood's column."""
  return jnp.pad(x, ((0, 0), (0, 1)))


def _surrogate(config, out, nvil_state) -> objectives.Surrogate:
  """The configured estimator on `out.terms [K, B, S]` (and its kin)."""
  if config.estimator == "vimco":
    return objectives.vimco(out.terms, out.score_log_q, nvil_state)
  if config.estimator == "rws":
    return objectives.rws(out.terms, out.log_q, nvil_state)
  if config.estimator == "concrete":
    return objectives.relaxed(out.terms, nvil_state)
  return objectives.nvil(out.terms, out.score_log_q, out.baseline,
                         nvil_state, config.nvil_decay, config.nvil_normalise)


def _apdr_loss_and_metrics(config, params, nvil_state, sequences, rng, rho,
                           min_survival, num_frames):
  """`loss_and_metrics` for APDR on `sequences [batch, T, H, W]`.

  In a curriculum stage of `num_frames < T` frames, the later frames' terms
  are exactly zero columns (`apdr.log_weight_terms`), so the NVIL statistics
  keep one shape (a zero column has no score and does not change the
  earlier columns' signals) and one compiled step serves every stage.
  """
  mc = run_config.model_config(config)
  k, batch, total = config.num_samples, sequences.shape[0], sequences.shape[1]
  if num_frames is None:
    num_frames = jnp.asarray(total, jnp.int32)
  # Means over the frames read (the skipped ones are zeros).
  frame_mean = lambda x: x.sum() / (k * batch * num_frames)
  if config.get("objective", "iwae") == "fivo":
    surrogate, frames, extra = _fivo_surrogate(
        config, mc, params, nvil_state, sequences, rng, rho, min_survival,
        num_frames)
    log_likelihood = frames.log_likelihood.sum() / (k * batch)
    kl = frames.kl.sum() / (k * batch)
  else:
    out = apdr.sample_log_weight_terms(mc, params, sequences, rng, rho, k,
                                      min_survival=min_survival,
                                      num_frames=num_frames, remat=True,
                                      detach_samples=config.estimator == "rws")
    with jax.named_scope("objective"):
      surrogate = _surrogate(config, out, nvil_state)
    frames, extra = out.frames, {}
    log_likelihood, kl = out.log_likelihood.mean(), out.kl.mean()
  # Mean survival probabilities over the decisions taken (objects of the
  # previous frame): a collapse of tracking shows here first.
  decisions = jnp.maximum((frames.prior_survival > 0).sum(), 1)
  metrics = dict(
      q_survival=frames.q_survival.sum() / decisions,
      prior_survival=frames.prior_survival.sum() / decisions,
      loss=surrogate.loss, bound=surrogate.bound, elbo=surrogate.elbo,
      log_likelihood=log_likelihood, kl=kl,
      baseline_loss=surrogate.baseline_loss,
      mean_count=frame_mean(frames.presence),
      mean_propagated=frame_mean(frames.num_propagated),
      mean_discovered=frame_mean(frames.num_discovered), rho=rho,
      num_frames=num_frames.astype(jnp.float32))
  metrics.update(extra)
  return surrogate.loss, (surrogate.nvil_state, metrics)


def _fivo_surrogate(config, mc, params, nvil_state, sequences, rng, rho,
                    min_survival, num_frames):
  """APDR's `objective='fivo'`: the adaptive particle filter (`fivo.py`),
  the model on FIVO, q on the filtering wake update (`estimator='rws'`).

  Returns:
    `(Surrogate, frames [T, batch*K, ...], extra metrics)`; `bound` is FIVO,
    `elbo` the mean over particles of their own `sum_t w_t`.
  """
  with jax.named_scope("objective"):
    weights = fivo.run_filter(
        mc, params, sequences, rng, rho, config.num_samples,
        threshold=config.get("fivo_resample_threshold", 0.5),
        num_frames=num_frames, min_survival=min_survival,
        detach_samples=True, remat=True)
    loss, bound = fivo.fivo_rws_loss(weights)
  elbo = (weights.log_joint - weights.log_q).sum(0).mean()
  resampled = weights.resampled.sum() / (sequences.shape[0] * num_frames)
  surrogate = objectives.Surrogate(loss, bound.mean(), elbo, jnp.zeros(()),
                                   nvil_state)
  return surrogate, weights.frames, dict(resampled_fraction=resampled)
