"""AIR: the static-scene model of notes §2-3 (with DESIGN §3).

Everything here is a pure function of `(params, inputs, rng)`; the networks live
in `AIRNetworks` and are called through `AIRNetworks.apply`. A scene has up to
`N` object slots; slot `i` holds `z_where [3]`, `z_what [D]` and a presence bit.
Inference is a `lax.scan` over slots: once a presence bit is 0 every later slot
is inactive (masked), and its log-probabilities, rendering and gradients are 0.

The per-slot log-probability terms are returned separately (not only summed) so
that the objectives can give each presence decision the credit of just the terms
it influences (DESIGN §3.4), and so that APDR's discovery can reuse `infer`
with at most `N - k_t` steps and a conditioning context.

This file is q (`infer`) and the log-weight that joins q to p
(`log_weight_terms`); p itself, the prior, decoder and likelihood, is in
`apdr_jax.air_generative`, whose names are importable from here as well.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import air_networks
from apdr_jax import background as background_lib
from apdr_jax import distributions as dist
from apdr_jax import glimpse
from apdr_jax import networks
from apdr_jax import rebar
from apdr_jax import relaxed
# The architecture lives in `air_networks`; these names stay importable
# from here.
from apdr_jax.air_networks import AIRConfig
from apdr_jax.air_networks import AIRNetworks
from apdr_jax.air_networks import CANVAS_RULES
from apdr_jax.air_networks import GLIMPSE_NETS
from apdr_jax.air_networks import init_params
# p, the generative model, lives in `air_generative`; its names too.
from apdr_jax.air_generative import composite, decode, log_likelihood
from apdr_jax.air_generative import presence_rho, prior_log_probs
from apdr_jax.air_generative import render_slots, sample_prior, where_prior

_call = air_networks.call


class Slots(NamedTuple):
  """Per-slot latents and their posterior log-probabilities.

  Attributes:
    z_where: `[batch, N, 3]` as `(s, x, y)`.
    z_what: `[batch, N, D]`.
    presence: `[batch, N]` in {0, 1}; 0 after the first 0. Relaxed (a
      `temperature` given to `infer`): in [0, 1], the product of the relaxed
      presence bits so far, non-increasing over slots.
    active: `[batch, N]`, 1 where a presence decision was taken (the previous
      slot was present and the step is within `max_steps`); relaxed: the
      previous slot's relaxed presence.
    presence_prob: `[batch, N]`, q's probability of presence.
    log_q_presence: `[batch, N]`, log q of the presence decision (0 if
      inactive); relaxed: `active` times the log density of `presence_logit`.
    log_q_z: `[batch, N]`, log q of `z_where` and `z_what` (0 if absent).
    hidden: `[batch, N, lstm]`, the inference LSTM output that produced the slot.
    presence_logit: `[batch, N]`, the relaxed sample in logit space
      (`relaxed.sample_logit`); 0 when presence is discrete.
    presence_noise: `[batch, N, 2]`, the uniforms that drew each presence
      bit (`rebar.noise`) with `rebar_noise=True`, for REBAR's and RELAX's
      relaxed samples; 0 otherwise.
    final_state: the LSTM state after the last step.
  """
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  active: jax.Array
  presence_prob: jax.Array
  log_q_presence: jax.Array
  log_q_z: jax.Array
  hidden: jax.Array
  presence_logit: jax.Array
  presence_noise: jax.Array
  final_state: networks.LSTMState


def infer(config: AIRConfig, params, images: jax.Array, rng: jax.Array, *,
          image_gates: jax.Array | None = None,
          initial_state: networks.LSTMState | None = None,
          context: jax.Array | None = None,
          max_steps: jax.Array | None = None,
          first_state: networks.LSTMState | None = None,
          deterministic: bool = False,
          detach_samples: bool = False,
          temperature: jax.Array | None = None,
          rebar_noise: bool = False,
          min_presence: jax.Array | None = None) -> Slots:
  """Samples the slots from q(z, n | x) with a masked scan over `N` steps.

  Args:
    config: the architecture.
    params: `AIRNetworks` parameters.
    images: `[batch, H, W]` in [0, 1].
    rng: one key; split per step and per sampling site.
    image_gates: `[batch, 4*lstm]` from `AIRNetworks.image_gates`, to share it
      across samples; computed here when None.
    initial_state: the LSTM's initial state (APDR's discovery passes its
      propagation state here); the learned one when None.
    context: `[batch, context_dim]` conditioning appended to the LSTM input at
      every step, or None when `context_dim == 0`.
    max_steps: `[batch]` int, the most objects allowed (`N - k_t` in APDR);
      `N` when None.
    first_state: the LSTM state after the first step, from
      `first_lstm_state`, to share it across samples; computed here when None.
    deterministic: take the posterior modes (presence if prob > 0.5, Gaussian
      means) instead of sampling; for evaluation.
    detach_samples: the samples carry no gradient (no reparameterised path):
      `log_q_z` is then log q at fixed samples, whose gradient is the
      wake-phase update of reweighted wake-sleep.
    temperature: scalar; when given, presence is relaxed (Concrete, see
      `relaxed`): slot `i` draws `c_i = sigmoid(y_i)` and its presence is
      `c_0 * ... * c_i`, which weights its drawing, its latents' log
      densities and its successor's decision, and feeds the LSTM, where the
      discrete model has the bit `b_0 * ... * b_i`. Every step stays
      differentiable; training only (`estimator='concrete'`).
    rebar_noise: draw each presence bit as `rebar.from_noise` does (the same
      Bernoulli) and keep its uniforms in `presence_noise` (REBAR, RELAX).
    min_presence: scalar `f`: q's presence probability is `f + (1 - f) p`
      (a warm-up that keeps objects drawn; q is that distribution, so the
      bound stays a bound, and the head keeps its gradient).

  Returns:
    `Slots`, each field `[batch, N, ...]`.
  """
  if (temperature is not None or rebar_noise) and (deterministic or
                                                  detach_samples):
    raise ValueError("a relaxed presence (temperature, rebar_noise) is for "
                     "training only: not with deterministic or detach_samples")
  batch = images.shape[0]
  if image_gates is None:
    image_gates = _call(config, params, AIRNetworks.image_gates, images)
  if first_state is None:
    first_state = first_lstm_state(config, params, image_gates, initial_state,
                                   context)
  if max_steps is None:
    max_steps = jnp.full((batch,), config.num_slots, jnp.int32)
  if context is None:
    context = jnp.zeros((batch, config.context_dim))

  def sample_slot(state, prev_presence, index, key):
    """Heads, sampling and glimpse for one slot, given its LSTM output."""
    where_key, what_key, presence_key = jax.random.split(key, 3)
    prob, (where_loc, where_scale) = _call(config, params, AIRNetworks.heads,
                                           state.hidden)
    if min_presence is not None:
      # A mixture, not a max: the presence head keeps its gradient.
      prob = min_presence + (1.0 - min_presence) * prob
    active = prev_presence * (index < max_steps)
    presence_logit = jnp.zeros_like(prob)
    presence_noise = jnp.zeros(prob.shape + (2,), prob.dtype)
    if rebar_noise:
      presence_noise = rebar.noise(presence_key, prob.shape, prob.dtype)
      bits = rebar.from_noise(relaxed.logit(jax.lax.stop_gradient(prob)),
                              presence_noise).bits
      presence = bits * active
      z_where = dist.normal_sample(where_key, where_loc, where_scale)
      log_q_presence = active * dist.bernoulli_log_prob(presence, prob)
    elif temperature is None:
      presence, z_where = sample_presence_and_where(
          presence_key, where_key, prob, where_loc, where_scale, active,
          deterministic)
      log_q_presence = active * dist.bernoulli_log_prob(presence, prob)
    else:
      presence_logit = relaxed.sample_logit(presence_key, relaxed.logit(prob),
                                            temperature)
      presence = jax.nn.sigmoid(presence_logit) * active
      z_where = dist.normal_sample(where_key, where_loc, where_scale)
      log_q_presence = active * relaxed.logit_log_prob(
          presence_logit, relaxed.logit(prob), temperature)
    z_where = jax.lax.stop_gradient(z_where) if detach_samples else z_where
    patch = glimpse.extract(images, z_where, config.glimpse_size,
                            config.extract_method)
    what_loc, what_scale = _call(config, params, AIRNetworks.encode,
                                 patch.reshape(batch, -1))
    z_what, log_q_z = sample_what(
        what_key, (what_loc, what_scale), z_where, (where_loc, where_scale),
        presence, deterministic, detach_samples)
    latents = jnp.concatenate([z_where, z_what, presence[:, None]], -1)
    outputs = (z_where, z_what, presence, active, prob, log_q_presence,
               log_q_z, state.hidden, presence_logit, presence_noise)
    return (state, latents, presence), outputs

  def step(carry, inputs):
    state, prev_latents, prev_presence = carry
    index, key = inputs
    state = _call(config, params, AIRNetworks.rnn_step, image_gates,
                  jnp.concatenate([prev_latents, context], -1), state)
    return sample_slot(state, prev_presence, index, key)

  keys = jax.random.split(rng, config.num_slots)
  # Slot 0 is peeled off the scan so that its LSTM state can be shared.
  carry, first_outputs = sample_slot(first_state, jnp.ones((batch,)), 0,
                                     keys[0])
  indices = jnp.arange(1, config.num_slots)
  # Unrolled: N is small and the unrolled loop lets XLA fuse across steps.
  (final_state, _, _), outputs = jax.lax.scan(step, carry,
                                              (indices, keys[1:]), unroll=True)
  outputs = jax.tree.map(
      lambda first, rest: jnp.concatenate([first[:, None],
                                           jnp.swapaxes(rest, 0, 1)], 1),
      first_outputs, outputs)
  return Slots(*outputs, final_state=final_state)


def sample_presence_and_where(presence_key, where_key, prob, where_loc,
                              where_scale, active, deterministic: bool):
  """A presence bit (0 where not `active`) and `z_where`, sampled or at
  their modes (`prob > 0.5`, the mean); shared with APDR's propagation."""
  if deterministic:
    return (prob > 0.5).astype(prob.dtype) * active, where_loc
  return (dist.bernoulli_sample(presence_key, prob) * active,
          dist.normal_sample(where_key, where_loc, where_scale))


def sample_what(what_key, what_dist, z_where, where_dist, presence,
                deterministic: bool, detach_samples: bool):
  """`z_what` (sampled, or the mean; without gradient under `detach_samples`)
  and log q of the object's continuous latents, 0 where absent; shared with
  APDR's propagation.

  Args:
    what_key: a key.
    what_dist: `(loc, scale)` of `z_what`, `[batch, D]` each.
    z_where: `[batch, 3]`, the object's sampled location.
    where_dist: `(loc, scale)` it was drawn from.
    presence: `[batch]` in {0, 1}.
    deterministic: the mean instead of a sample.
    detach_samples: see `infer`.

  Returns:
    `(z_what [batch, D], log_q_z [batch])`.
  """
  z_what = what_dist[0] if deterministic else dist.normal_sample(
      what_key, *what_dist)
  z_what = jax.lax.stop_gradient(z_what) if detach_samples else z_what
  log_q_z = presence * (dist.normal_log_prob(z_where, *where_dist).sum(-1) +
                        dist.normal_log_prob(z_what, *what_dist).sum(-1))
  return z_what, log_q_z


def first_lstm_state(config: AIRConfig, params, image_gates: jax.Array,
                     initial_state: networks.LSTMState | None = None,
                     context: jax.Array | None = None) -> networks.LSTMState:
  """The inference LSTM's state after its first step, `[batch, lstm]` each.

  With the learned initial state and no context it depends on the image
  alone, so training computes it once per image and shares it across the K
  samples (`infer(..., first_state=...)`); the learned state's recurrent
  contribution is then one `[1, 4*lstm]` row rather than one per image.
  """
  batch = image_gates.shape[0]
  if initial_state is None and context is None:
    def learned_first_step(module, gates):
      state = module.rnn.initial_state(1)
      return module.rnn.step(gates, jnp.zeros((1, config.latent_dim +
                                               config.context_dim)), state)
    state = AIRNetworks(config).apply({"params": params}, image_gates,
                                      method=learned_first_step)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape[1:]),
                        state)
  if initial_state is None:
    initial_state = _call(config, params, AIRNetworks.initial_state, batch)
  if context is None:
    context = jnp.zeros((batch, config.context_dim))
  latents = jnp.zeros((batch, config.latent_dim))
  return _call(config, params, AIRNetworks.rnn_step, image_gates,
               jnp.concatenate([latents, context], -1), initial_state)


def infer_background(config: AIRConfig, params, slots: Slots, rng: jax.Array,
                     *, deterministic: bool = False,
                     detach_samples: bool = False,
                     background_detail: jax.Array | None = None):
  """The background of each image (`background.infer`) from the LSTM's
  output after the last slot; None when `config.background == 'none'`.
  With `background_detail` (a scalar in [0, 1]) the image-dependent part is
  `w * b + (1 - w) * mean(b)`, its spatial mean where `w = 0` (a warm-up)."""
  if config.background == "none":
    return None
  apply_fn = lambda method, *args: _call(
      config, params, AIRNetworks.background_step, method, *args)
  return background_lib.infer(
      apply_fn, config.background_latent_dim, slots.final_state.hidden, rng,
      deterministic=deterministic, detach_samples=detach_samples,
      detail=background_detail)


class LogWeightTerms(NamedTuple):
  """The pieces of one sample's log-weight `log p(x, z, n) - log q(z, n | x)`.

  Attributes:
    terms: `[batch, N + 1]`: for slot `i < N`, `log p - log q` of its presence
      decision and latents; the last column is `log p(x | z)`. A presence
      decision at slot `i` influences columns `i:` only.
    score_log_q: `[batch, N + 1]`, log q of each presence decision (0 in the
      last column), the terms that carry the score-function gradient.
    baseline: `[batch, N + 1]`, NVIL's input-dependent baseline per decision.
    log_likelihood: `[batch]`.
    kl: `[batch]`, `log q - log p` summed over slots (a one-sample KL estimate).
    slots: the sampled `Slots`.
    canvas: `[batch, H, W]`, the reconstruction: the mean of p(x | z), the
      `composite` of the drawings (over the background, if any).
    log_q: `[batch]`, `log q(z, n | x)` of the sample, every decision and
      latent.
    background: `[batch, H, W]`, the inferred background; zeros without one.
  """
  terms: jax.Array
  score_log_q: jax.Array
  baseline: jax.Array
  log_likelihood: jax.Array
  kl: jax.Array
  slots: Slots
  canvas: jax.Array
  log_q: jax.Array
  background: jax.Array


def log_weight_terms(config: AIRConfig, params, images: jax.Array,
                     rng: jax.Array, rho: jax.Array, *,
                     image_gates: jax.Array | None = None,
                     first_state: networks.LSTMState | None = None,
                     deterministic: bool = False,
                     detach_samples: bool = False,
                     temperature: jax.Array | None = None,
                     rebar_noise: bool = False,
                     min_presence: jax.Array | None = None,
                     background_detail: jax.Array | None = None
                     ) -> LogWeightTerms:
  """Samples q once per image and returns its log-weight, term by term.

  Args:
    config: the architecture.
    params: `AIRNetworks` parameters.
    images: `[batch, H, W]` in [0, 1].
    rng: a key.
    rho: scalar, the prior probability of one more object.
    image_gates: optional shared `[batch, 4*lstm]` (see `infer`).
    first_state: optional shared first LSTM state (see `infer`).
    deterministic: use posterior modes (evaluation only).
    detach_samples: samples without gradient (see `infer`; RWS).
    temperature: relaxed presence at this temperature (see `infer`;
      Concrete). The terms are then those of the relaxed objective: each
      slot's `log p - log q` weighted by its relaxed presence (decision
      terms by the previous slot's), the likelihood of the canvas drawn with
      those weights. They equal the discrete terms wherever the relaxed
      presence is in {0, 1}, the limit as the temperature goes to 0.
    rebar_noise: keep the presence bits' uniforms (see `infer`).
    min_presence: floor on q's presence probability (see `infer`).
    background_detail: the background's detail weight (see
      `infer_background`).

  Returns:
    `LogWeightTerms`; `terms.sum(-1)` is the log-weight `[batch]`. With a
    background latent, its `log p - log q` is in the last column (every
    presence decision influences it, through `h^N`), `kl` and `log_q`.
  """
  slots = infer(config, params, images, rng, image_gates=image_gates,
                first_state=first_state, deterministic=deterministic,
                detach_samples=detach_samples, temperature=temperature,
                rebar_noise=rebar_noise, min_presence=min_presence)
  log_p_presence, log_p_z = prior_log_probs(config, slots, rho, temperature)
  canvas = composite(config, render_slots(config, params, slots))
  # A key of its own (`fold_in`), so that the objects' samples do not change.
  back = infer_background(config, params, slots,
                          jax.random.fold_in(rng, config.num_slots),
                          deterministic=deterministic,
                          detach_samples=detach_samples,
                          background_detail=background_detail)
  slot_kl = slots.log_q_presence + slots.log_q_z - log_p_presence - log_p_z
  log_q = (slots.log_q_presence + slots.log_q_z).sum(-1)
  kl = slot_kl.sum(-1)
  if back is None:
    log_lik = log_likelihood(config, images, canvas)
    last_column, background = log_lik, jnp.zeros_like(canvas)
  else:
    log_lik = log_likelihood(config, images, canvas, back.image)
    canvas = background_lib.compose(config.background_compose, canvas,
                                    back.image)
    last_column, background = log_lik + back.log_p_minus_log_q, back.image
    kl, log_q = kl - back.log_p_minus_log_q, log_q + back.log_q
  terms = jnp.concatenate([-slot_kl, last_column[:, None]], -1)
  score_log_q = jnp.pad(slots.log_q_presence, ((0, 0), (0, 1)))
  baseline = jnp.pad(baseline_values(config, params, slots.hidden),
                     ((0, 0), (0, 1)))
  return LogWeightTerms(terms, score_log_q, baseline, log_lik, kl, slots,
                        canvas, log_q, background)


def baseline_values(config: AIRConfig, params, hidden: jax.Array) -> jax.Array:
  """NVIL's baseline for every slot's decision: `[batch, N, lstm] -> [batch, N]`."""
  return jax.vmap(lambda h: _call(config, params, AIRNetworks.baseline_value, h),
                  in_axes=1, out_axes=1)(hidden)


def image_gates(config: AIRConfig, params, images: jax.Array) -> jax.Array:
  """The image's share of the inference LSTM gates, `[batch, 4*lstm]`."""
  return _call(config, params, AIRNetworks.image_gates, images)
