"""Objectives and gradient estimators, independent of the model.

A model hands over, for `K` samples of each of `B` inputs, a log-weight split
into `S` ordered terms, `terms [K, B, S]` (their sum is
`log p(x, z) - log q(z | x)`), and the log q of each discrete decision,
`score_log_q [K, B, S]`, with the contract that the decision in column `i`
influences only `terms[..., i:]`. AIR has `S = N + 1` (slots then likelihood);
APDR orders its decisions and likelihoods in time.

Each function returns a *surrogate* loss: its value is minus the bound, and its
gradient is an estimate of minus the bound's gradient, combining the pathwise
(reparameterised) gradient of the continuous latents with a score-function term
for each discrete decision (DESIGN §3.4: credit only for the terms a decision
can influence; the NVIL or VIMCO baseline is subtracted on top).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def reverse_cumsum(x: jax.Array) -> jax.Array:
  """`out[..., i] = sum_{j >= i} x[..., j]`."""
  return jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1)


def log_mean_exp(x: jax.Array, axis: int = 0) -> jax.Array:
  return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


class NVILState(NamedTuple):
  """Running statistics of NVIL's learning signal, one per decision column.

  Attributes:
    mean: `[S]`, running mean of the learning signal (the input-independent
      baseline).
    var: `[S]`, running variance of the signal after both baselines, used to
      normalise it.
  """
  mean: jax.Array
  var: jax.Array


def nvil_init(num_terms: int) -> NVILState:
  return NVILState(jnp.zeros((num_terms,)), jnp.ones((num_terms,)))


class Surrogate(NamedTuple):
  """A surrogate loss and what to log about it.

  Attributes:
    loss: scalar to minimise (model part plus baseline part).
    bound: scalar, the mean bound (ELBO for NVIL, IWAE for VIMCO).
    elbo: scalar, mean single-sample ELBO.
    baseline_loss: scalar, the baseline's regression loss (0 for VIMCO).
    nvil_state: updated `NVILState` (unchanged for VIMCO).
  """
  loss: jax.Array
  bound: jax.Array
  elbo: jax.Array
  baseline_loss: jax.Array
  nvil_state: NVILState


def nvil(terms: jax.Array, score_log_q: jax.Array, baseline: jax.Array,
         state: NVILState, decay: float = 0.9,
         normalise: bool = True) -> Surrogate:
  """The single-sample ELBO with NVIL for the discrete decisions.

  For decision `i` the learning signal is `L_i = sum_{j >= i} terms_j`, centred
  by a running mean `c_i` and the input-dependent `baseline_i`, and scaled by
  `max(1, running std)` (Mnih & Gregor, 2014).

  Args:
    terms: `[B, S]` (or `[K, B, S]`, treated as `K * B` independent samples).
    score_log_q: same shape as `terms`.
    baseline: same shape; it must carry gradients only to the baseline network.
    state: running statistics.
    decay: their exponential decay.
    normalise: divide by `max(1, running std)`; this rescales the score term
      (a per-decision step size), so the estimate is unbiased only while the
      running std is at most 1 or with `normalise=False`.

  Returns:
    `Surrogate`.
  """
  terms = terms.reshape((-1, terms.shape[-1]))
  score_log_q = score_log_q.reshape(terms.shape)
  baseline = baseline.reshape(terms.shape)
  signal = sg(reverse_cumsum(terms))
  # Centre and scale with the statistics from *before* this batch: the batch's
  # own mean would include each sample's signal in its baseline (a bias).
  centred = signal - state.mean - sg(baseline)
  advantage = centred / jnp.maximum(1.0, jnp.sqrt(state.var)) if normalise \
      else centred
  mean = decay * state.mean + (1 - decay) * signal.mean(0)
  var = decay * state.var + (1 - decay) * jnp.mean(centred ** 2, 0)
  elbo = terms.sum(-1)
  score = (sg(advantage) * score_log_q).sum(-1)
  baseline_loss = jnp.mean((signal - state.mean - baseline) ** 2)
  loss = -jnp.mean(elbo + score) + baseline_loss
  return Surrogate(loss, elbo.mean(), elbo.mean(), baseline_loss,
                   NVILState(mean, var))


def vimco_signals(terms: jax.Array) -> jax.Array:
  """VIMCO learning signals with per-decision credit.

  For sample `k` and decision `i`, split its log-weight into the part the
  decision cannot influence, `a = sum_{j < i} terms_j`, and the part it can,
  `c = sum_{j >= i} terms_j`. The baseline is the IWAE bound with sample `k`'s
  `c` replaced by the mean of the other samples' `c`, keeping its own `a`.
  It depends only on sample `k`'s past and the other samples, so it is a valid
  control variate; with `i = 0` it is the original VIMCO baseline.

  Args:
    terms: `[K, B, S]`, `K >= 2`.

  Returns:
    `[K, B, S]`: `IWAE - baseline`, without gradient.
  """
  terms = sg(terms)
  num_samples = terms.shape[0]
  log_weight = terms.sum(-1)  # [K, B]
  influenced = reverse_cumsum(terms)  # [K, B, S]
  fixed = log_weight[..., None] - influenced
  others_mean = (influenced.sum(0, keepdims=True) - influenced) / (
      num_samples - 1)
  replaced = fixed + others_mean  # [K, B, S]: sample k's stand-in log-weight
  bound = log_mean_exp(log_weight, 0)  # [B]
  # log(sum_{j != k} exp(w_j) + exp(replaced_k)) for every k, all in log
  # space: a dominant sample must not underflow the others to log(0).
  not_self = ~jnp.eye(num_samples, dtype=bool)  # [k, j]
  log_others = jax.nn.logsumexp(
      jnp.where(not_self[:, :, None], log_weight[None], -jnp.inf), axis=1)
  loo = jnp.logaddexp(log_others[..., None], replaced) - jnp.log(num_samples)
  return bound[None, :, None] - loo


def vimco(terms: jax.Array, score_log_q: jax.Array,
          state: NVILState) -> Surrogate:
  """The IWAE bound over `K` samples with VIMCO for the discrete decisions.

  Args:
    terms: `[K, B, S]`.
    score_log_q: `[K, B, S]`.
    state: passed through unchanged (kept so both estimators share a state).

  Returns:
    `Surrogate`; `bound` is the IWAE bound.
  """
  log_weight = terms.sum(-1)
  bound = log_mean_exp(log_weight, 0)  # [B]
  score = (vimco_signals(terms) * score_log_q).sum((0, 2))  # [B]
  loss = -jnp.mean(bound + score)
  return Surrogate(loss, bound.mean(), log_weight.mean(), jnp.zeros(()), state)


def rws(terms: jax.Array, log_q: jax.Array, state: NVILState) -> Surrogate:
  """Reweighted wake-sleep (Bornschein & Bengio, 2015), wake phases only.

  With `w_k = terms[k].sum()` and self-normalised weights
  `v_k = softmax_k(w)` (no gradient), the model's gradient is
  `sum_k v_k grad log p(x, z_k)`, the IWAE bound's, and q's is the wake-phase
  `sum_k v_k grad log q(z_k | x)`: an estimate of minus the gradient of the
  inclusive `KL(p(z | x) || q(z | x))`, biased at finite `K` and consistent
  as `K` grows. q is trained toward the importance-weighted posterior, not
  on the bound; the discrete decisions need no score function. The samples
  must carry no gradient (`detach_samples=True` in the model), so that
  `grad log q` is taken at fixed samples; the model's and q's parameters
  must be disjoint (they are in AIR and APDR).

  Args:
    terms: `[K, B, S]`, the log-weights term by term.
    log_q: `[K, B]`, `log q(z_k | x)` with gradient to q's parameters.
    state: passed through unchanged.

  Returns:
    `Surrogate`; `bound` is the IWAE bound.
  """
  log_weight = terms.sum(-1)  # [K, B]
  weights = jax.nn.softmax(sg(log_weight), axis=0)
  # d/dtheta (w + log q) = d log p; d/dphi (w + 2 log q) = d log q.
  loss = -jnp.mean(jnp.sum(weights * (log_weight + 2.0 * log_q), 0))
  return Surrogate(loss, log_mean_exp(log_weight, 0).mean(), log_weight.mean(),
                   jnp.zeros(()), state)


def relaxed(terms: jax.Array, state: NVILState) -> Surrogate:
  """The IWAE bound of relaxed samples, by the pathwise gradient alone.

  For a model whose discrete decisions were relaxed (Concrete, see
  `relaxed.py`): every latent is reparameterised, so minus the bound is the
  loss itself and no score-function term is needed. With `K = 1` this is
  the relaxed ELBO. The bound is that of the relaxed model, which differs
  from the discrete model's (evaluation thresholds the relaxed decisions).

  Args:
    terms: `[K, B, S]`.
    state: passed through unchanged.

  Returns:
    `Surrogate`; `bound` is the relaxed IWAE bound (the ELBO when `K = 1`).
  """
  log_weight = terms.sum(-1)
  bound = log_mean_exp(log_weight, 0)
  return Surrogate(-bound.mean(), bound.mean(), log_weight.mean(),
                   jnp.zeros(()), state)


def rebar(terms: jax.Array, score_log_q: jax.Array, control_z: jax.Array,
          control_z_tilde: jax.Array, variance_loss: jax.Array,
          state: NVILState) -> Surrogate:
  """The single-sample ELBO with REBAR or RELAX for the discrete decisions.

  Decision `i`'s score-function term is weighted by its learning signal
  `L_i = sum_{j >= i} terms_j` minus its control variate at the conditional
  relaxed sample, `c_i(z~_i)`, and `c_i(z_i) - c_i(z~_i)` is added with its
  gradient (through both samples' logits): unbiased for any `c_i` that
  depends on the decision's own noise only through `z_i` (`air_control`).

  Args:
    terms: `[B, S]` (or `[K, B, S]`, treated as `K * B` independent samples).
    score_log_q: same shape, log q of each decision.
    control_z: same shape (0 where there is no decision), `c_i(z_i)`.
    control_z_tilde: same shape, `c_i(z~_i)`.
    variance_loss: scalar added to the loss (RELAX's network objective; its
      gradient reaches that network only), 0 for REBAR.
    state: passed through unchanged.

  Returns:
    `Surrogate`; `bound` is the ELBO, `baseline_loss` the variance loss.
  """
  terms = terms.reshape((-1, terms.shape[-1]))
  shaped = lambda x: x.reshape(terms.shape)
  score_log_q, control_z, control_z_tilde = map(
      shaped, (score_log_q, control_z, control_z_tilde))
  signal = sg(reverse_cumsum(terms))
  elbo = terms.sum(-1)
  score = (sg(signal - control_z_tilde) * score_log_q
           + control_z - control_z_tilde).sum(-1)
  loss = -jnp.mean(elbo + score) + variance_loss
  return Surrogate(loss, elbo.mean(), elbo.mean(), variance_loss, state)


def iwae_bound(log_weights: jax.Array) -> jax.Array:
  """`log (1/K) sum_k exp(w_k)` over axis 0: `[K, ...] -> [...]`."""
  return log_mean_exp(log_weights, 0)
