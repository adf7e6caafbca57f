"""APDR (SQAIR): AIR over image sequences, notes §8 with DESIGN §3.

Each frame `t` runs two phases over `N` fixed object slots:

* **Propagation** (eq. 24-26): a masked `lax.scan` over the previous frame's
  objects (compacted to the front). Object `i` takes a glimpse around the
  location its prior predicts (or its previous one; `propagation_glimpse`),
  and from it, its previous latents, the temporal state
  `h^q_t` and the relation state `h^{P,i}_t` (an RNN over the objects
  propagated before it) samples survival `b^{P,i}` and new latents.
* **Discovery** (eq. 27-28) *is* `air.infer`, conditioned on the relation
  state after the last object (`context = h^{P,k_t}`) and limited to
  `N - k_t` steps.

The prior (eq. 13-16) runs one prior RNN per object (shared weights, its own
state; newly discovered objects start from the learned initial state) for
survival and a Gaussian transition of `z_where` and `z_what`; discovery uses
AIR's prior truncated at `N - k_t`. After both phases the present objects are
compacted to the front in a stable order; a propagated object keeps its id,
and discovered objects get fresh ids.

The log-weight is split per frame (DESIGN §3.3): `w_t = log p(x_t | z_t) +
log p(z_t, n_t, k_t | past) - log q(z_t, n_t, k_t | x_t, past)`, ordered as
`[propagation slots (N), discovery slots (N), likelihood]`, so that the
objectives in `objectives.py` give each presence decision the credit of only
the terms it can influence (the later ones). Time is a `lax.scan`.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from apdr_jax import air
from apdr_jax import distributions as dist
from apdr_jax import glimpse
from apdr_jax import ink
from apdr_jax import networks


@dataclasses.dataclass(frozen=True)
class APDRConfig:
  """Architecture of APDR; `air` configures discovery and the shared decoder.

  Attributes:
    air: the discovery model (its `context_dim` must equal `relation_size`).
    hidden_size: width of the propagation MLPs and of the temporal and prior
      RNNs.
    relation_size: width of the relation RNN `R^P`.
    survival_init: initial survival probability of q.
    prior_survival_init: initial survival probability of the prior (0 = the
      same as q's). Near 1, forgetting an object costs about
      `-log(1 - prior_survival_init)` nats until training says otherwise
      (SQAIR's public code starts its prior at sigmoid(10)).
    transition_scale_init: initial std of the prior's transitions of
      `z_where` and `z_what`, and of q's propagated `z_where` and `z_what`.
    posterior_scale_init: initial std of q's propagated `z_where` and
      `z_what` instead (0 = `transition_scale_init`). The likelihood is sharp:
      at 0.03, the noise of sampled propagated objects cost about 100 nats
      of log-likelihood per 3-frame sequence against their modes, and
      forgetting them won the bound (measured at the grafted initialisation).
    zero_init_transitions: the learned corrections of the prior's and q's
      transition means start at exactly 0 instead of small random values:
      q then starts at the previous `z_what` and the anchor, the prior at the
      previous `z_what` and location, and a propagated object's KL starts
      near its minimum (random corrections of about 0.05 per dimension cost
      tens of nats under a 0.03 std).
    discovery_input: what discovery looks at: "residual", the frame minus
      the propagated objects' rendering (clipped to [0, 1]), or "image", the
      frame itself. The residual hides what is already explained, so an AIR
      trained on single frames does not rediscover propagated digits; with
      "image" only the relation state tells it, and training learned to
      forget every object and rediscover it each frame instead (measured).
    propagation_glimpse: where q's propagation looks: "prior", around the
      location that the object's prior RNN predicts for this frame (it has
      seen the object's past, so it knows its velocity), with q's `z_where`
      an offset from that prediction; or "previous", around the object's
      location in the previous frame, with `z_where` an offset from it.
    constant_velocity: the prior's mean of `z_where` is the previous location
      plus the object's last displacement (of position only; zero for a new
      object) plus the learned correction, instead of the previous location
      plus the correction: the prior (and q's glimpse, with "prior") then follows a
      moving digit from the first step instead of waiting for its LSTM to
      learn velocity (a step-1500 run lagged such digits by 2 px).
    ink_tracking_steps: how many mean-shift steps move q's anchor (see
      `propagation_glimpse`) onto the object's ink before q looks
      (`ink_anchor`): the centroid of the frame's ink around the anchor,
      with the other objects' drawings taken out, against that of the
      object's own decoded glimpse. q's `z_where` is still an offset from
      the anchor, which is a function of the frame and the past, so the
      bound holds. 0 = off: q then has to learn this regression first, and
      while it lagged moving digits, forgetting and rediscovering them won
      (measured).
    ink_fit_steps: Levenberg-Marquardt steps that then fit the anchor's
      scale and position to that ink by least squares. With positions
      tracked but not scales, boxes grew 13% in 9 frames; matching the
      ink's spread (its RMS distance from the centroid) instead let a
      neighbouring digit's ink inflate boxes by 30% in one frame (both
      measured).
    ink_window: the side of the window that both kinds of steps read,
      relative to the object's box.
    ink_gradient: differentiate through `ink_anchor` (exact pathwise
      gradient) instead of treating the anchor as a constant (see
      `propagate`).
    propagation_input: what q's propagation glimpses read: "image", the
      frame, or "residual", the frame minus `residual_gain` times what the
      objects propagated before this one drew, so that a duplicate of an
      earlier object sees its ink explained away and can be forgotten.
    residual_gain: with `discovery_input="residual"`, discovery sees
      `clip(frame - residual_gain * propagated rendering, 0, 1)`. The
      decoder draws strokes fainter than the data (about 0.7 for 1), so with
      1 a tracked digit left a faint copy of itself, and the AIR-trained
      discovery found it again in 45% of one-digit sequences at frame 1;
      with 2 (the configs) it found none (measured).
    what_refresh: what q's propagated `z_what` is a learned residual on:
      "previous", the object's previous `z_what`, or "encoder", the mean of
      AIR's `z_what` encoder (shared with discovery) on the glimpse at the
      object's new `z_where`, so that a tracked object is re-read from the
      frame as precisely as a fresh discovery would read it. The prior's
      transition is still centred on the previous `z_what`, so with
      "encoder" its std must cover the frame-to-frame jitter of two samples
      of AIR's encoder (`what_transition_scale_init`).
    what_transition_scale_init: initial std of the prior's transition of
      `z_what` (0 = `transition_scale_init`).
  """
  air: air.AIRConfig
  hidden_size: int = 256
  relation_size: int = 256
  survival_init: float = 0.95
  prior_survival_init: float = 0.0
  transition_scale_init: float = 0.1
  posterior_scale_init: float = 0.0
  zero_init_transitions: bool = False
  discovery_input: str = "residual"
  # "previous" here so that a workdir whose config.json predates the field
  # keeps the behaviour it was trained with; configs/default.py sets "prior".
  propagation_glimpse: str = "previous"
  constant_velocity: bool = False
  ink_tracking_steps: int = 0
  ink_window: float = 1.0
  ink_fit_steps: int = 0
  ink_gradient: bool = False
  propagation_input: str = "image"
  residual_gain: float = 1.0
  what_refresh: str = "previous"
  what_transition_scale_init: float = 0.0

  def __post_init__(self):
    if self.discovery_input not in ("residual", "image"):
      raise ValueError(f"discovery_input={self.discovery_input!r}; use "
                       "'residual' or 'image'")
    if self.propagation_input not in ("image", "residual"):
      raise ValueError(f"propagation_input={self.propagation_input!r}; use "
                       "'image' or 'residual'")
    if self.what_refresh not in ("previous", "encoder"):
      raise ValueError(f"what_refresh={self.what_refresh!r}; use "
                       "'previous' or 'encoder'")
    if self.propagation_glimpse not in ("prior", "previous"):
      raise ValueError(
          f"propagation_glimpse={self.propagation_glimpse!r}; use 'prior' or "
          "'previous'")
    if not 0.0 < self.survival_init < 1.0:
      raise ValueError(f"survival_init={self.survival_init} must lie in "
                       "(0, 1)")
    if not (self.prior_survival_init == 0.0 or
            0.0 < self.prior_survival_init < 1.0):
      raise ValueError(f"prior_survival_init={self.prior_survival_init} must "
                       "lie in (0, 1) or be 0 (as survival_init)")
    if not self.transition_scale_init > 0 or self.posterior_scale_init < 0:
      raise ValueError(
          f"transition_scale_init={self.transition_scale_init} must be > 0 "
          f"and posterior_scale_init={self.posterior_scale_init} >= 0")
    if self.what_transition_scale_init < 0:
      raise ValueError(f"what_transition_scale_init="
                       f"{self.what_transition_scale_init} must be >= 0")
    if self.residual_gain < 0:
      raise ValueError(f"residual_gain={self.residual_gain} must be >= 0")
    if self.ink_tracking_steps < 0 or self.ink_fit_steps < 0:
      raise ValueError(f"ink_tracking_steps={self.ink_tracking_steps} and "
                       f"ink_fit_steps={self.ink_fit_steps} must be >= 0")
    if not self.ink_window >= 1.0:
      raise ValueError(f"ink_window={self.ink_window} must be >= 1 (the "
                       "window must hold the object's box)")
    if self.air.context_dim != self.relation_size:
      raise ValueError(f"air.context_dim={self.air.context_dim} must equal "
                       f"relation_size={self.relation_size}")

  @property
  def num_slots(self) -> int:
    return self.air.num_slots

  @property
  def terms_per_frame(self) -> int:
    """Propagation slots, discovery slots, likelihood."""
    return 2 * self.air.num_slots + 1


def _logit(p: float) -> float:
  return math.log(p / (1.0 - p))


def _inverse_softplus(y: float) -> float:
  return math.log(math.expm1(y))


class APDRNetworks(nn.Module):
  """All of APDR's networks; call methods through `apply(..., method=...)`."""
  config: APDRConfig

  def setup(self):
    c, a = self.config, self.config.air
    small = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
    posterior_scale = c.posterior_scale_init or c.transition_scale_init
    self.air = air.AIRNetworks(a)
    # Inference: temporal state h^q over the previous frame's objects.
    self.object_embed = networks.MLP((c.hidden_size,), c.hidden_size)
    self.temporal_rnn = networks.LSTM(c.hidden_size)
    # Propagation posterior.
    self.prop_glimpse = networks.MLP((a.mlp_size,), c.hidden_size)
    self.prop_core = networks.MLP((c.hidden_size,), c.hidden_size)
    self.prop_presence = nn.Dense(
        1, kernel_init=small,
        bias_init=nn.initializers.constant(_logit(c.survival_init)))
    # Starts as precise as the prior's transition: a propagated object that
    # is sampled a few pixels off its digit costs hundreds of nats, and
    # rediscovering it looked cheaper than tracking it (measured).
    self.prop_where = networks.GaussianHead(
        3, scale_bias=_inverse_softplus(posterior_scale),
        zero_loc=c.zero_init_transitions)
    # q's z_what starts as the previous z_what with a small std, and the
    # prior's transition starts with the same small std: a propagated object
    # then costs ~0 nats and redraws the same digit, where a fresh one costs
    # -log rho plus its KL from N(0, I). With std 1 (or a random encoder),
    # forgetting every object and rediscovering it was cheaper, and training
    # learned to propagate nothing (measured: 0.01 objects per frame).
    self.prop_what = networks.GaussianHead(
        a.z_what_dim, hidden_sizes=(a.mlp_size,),
        scale_bias=_inverse_softplus(posterior_scale),
        zero_loc=c.zero_init_transitions)
    self.relation_rnn = networks.LSTM(c.relation_size)
    self.prop_baseline = networks.MLP((a.mlp_size,), 1)
    # Propagation prior: one RNN per object with shared weights.
    self.prior_rnn = networks.LSTM(c.hidden_size)
    self.prior_survival = nn.Dense(
        1, kernel_init=small,
        bias_init=nn.initializers.constant(_logit(
            c.prior_survival_init or c.survival_init)))
    self.prior_where = networks.GaussianHead(
        3, scale_bias=_inverse_softplus(c.transition_scale_init),
        zero_loc=c.zero_init_transitions)
    self.prior_what = networks.GaussianHead(
        a.z_what_dim, scale_bias=_inverse_softplus(
            c.what_transition_scale_init or c.transition_scale_init),
        zero_loc=c.zero_init_transitions)

  # --- temporal and prior RNNs ------------------------------------------------
  def temporal_initial(self, batch: int) -> networks.LSTMState:
    return self.temporal_rnn.initial_state((batch,))

  def temporal_step(self, z_where, z_what, presence, state):
    """h^q_t from the previous frame's objects (a masked sum: a set input)."""
    embedded = self.object_embed(jnp.concatenate([z_where, z_what], -1))
    summary = (presence[..., None] * jax.nn.relu(embedded)).sum(-2)
    return self.temporal_rnn.step(summary, state)

  def prior_initial(self, batch_shape) -> networks.LSTMState:
    return self.prior_rnn.initial_state(batch_shape)

  def prior_step(self, z_where, z_what, state):
    """`[..., N, ...]`: each object's prior state after its latents."""
    return self.prior_rnn.step(jnp.concatenate([z_where, z_what], -1), state)

  def prior_heads(self, hidden, z_where, z_what):
    """Survival prob `[...]`, (loc, scale) of `z_where` and of `z_what`."""
    survival = jax.nn.sigmoid(self.prior_survival(hidden)[..., 0])
    return (survival, self.prior_where(hidden, z_where),
            self.prior_what(hidden, z_what))

  # --- propagation posterior --------------------------------------------------
  def glimpse_features(self, patches_flat):
    return jax.nn.relu(self.prop_glimpse(patches_flat))

  def prop_hidden(self, features, z_where, z_what, temporal, relation,
                  prior_hidden=None):
    """q's propagation features; with `propagation_glimpse="prior"` they also
    read the object's prior-RNN state (its own history: the shared `h^q`
    cannot tell one object's velocity from another's)."""
    parts = [features, z_where, z_what, temporal, relation]
    if self.config.propagation_glimpse == "prior":
      parts.append(prior_hidden)
    return jax.nn.relu(self.prop_core(jnp.concatenate(parts, -1)))

  def prop_heads(self, hidden, z_where):
    """Survival prob `[batch]` and `z_where` (loc, scale) around `z_where`."""
    prob = jax.nn.sigmoid(self.prop_presence(hidden)[..., 0])
    return prob, self.prop_where(hidden, z_where)

  def prop_encode(self, patch_flat, hidden, z_what):
    """`z_what` (loc, scale), a residual on the object's previous `z_what` or
    on AIR's encoding of the glimpse (`what_refresh`)."""
    features = jnp.concatenate([patch_flat, hidden], -1)
    if self.config.what_refresh == "previous":
      return self.prop_what(features, z_what)
    # The learned residual corrects AIR's reading of the glimpse, and q is
    # as uncertain as AIR's encoder (the decoder was trained under that
    # noise); the head's scale output goes unused.
    encoded_loc, encoded_scale = self.air.encode(patch_flat)
    loc, _ = self.prop_what(features, encoded_loc)
    return loc, encoded_scale

  def relation_initial(self, batch: int) -> networks.LSTMState:
    return self.relation_rnn.initial_state((batch,))

  def relation_step(self, z_where, z_what, presence, state):
    inputs = jnp.concatenate([presence[:, None] * z_where,
                              presence[:, None] * z_what, presence[:, None]], -1)
    return self.relation_rnn.step(inputs, state)

  def prop_baseline_value(self, hidden):
    return self.prop_baseline(jax.lax.stop_gradient(hidden))[..., 0]

  def __call__(self, images):
    """Touches every network once (used only by `init`)."""
    c, a = self.config, self.config.air
    batch = images.shape[0]
    self.air(images)
    z_where = jnp.zeros((batch, c.num_slots, 3))
    z_what = jnp.zeros((batch, c.num_slots, a.z_what_dim))
    presence = jnp.zeros((batch, c.num_slots))
    temporal = self.temporal_step(z_where, z_what, presence,
                                  self.temporal_initial(batch))
    prior = self.prior_step(z_where, z_what, self.prior_initial(
        (batch, c.num_slots)))
    self.prior_heads(prior.hidden, z_where, z_what)
    relation = self.relation_step(z_where[:, 0], z_what[:, 0], presence[:, 0],
                                  self.relation_initial(batch))
    features = self.glimpse_features(jnp.zeros((batch, a.glimpse_size ** 2)))
    hidden = self.prop_hidden(features, z_where[:, 0], z_what[:, 0],
                              temporal.hidden, relation.hidden,
                              prior.hidden[:, 0])
    self.prop_heads(hidden, z_where[:, 0])
    self.prop_encode(jnp.zeros((batch, a.glimpse_size ** 2)), hidden,
                     z_what[:, 0])
    return self.prop_baseline_value(hidden)


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: APDRConfig, rng: jax.Array):
  """Initial parameters of `APDRNetworks(config)`; `params["air"]` is AIR's."""
  images = jnp.zeros((1, config.air.canvas_size, config.air.canvas_size))
  return APDRNetworks(config).init(rng, images)["params"]


def _call(config, params, method, *args):
  return APDRNetworks(config).apply({"params": params}, *args, method=method)


class Objects(NamedTuple):
  """The objects of one frame, compacted to the front of `N` slots.

  Attributes:
    z_where: `[batch, N, 3]`.
    z_what: `[batch, N, D]`.
    presence: `[batch, N]` in {0, 1}, a prefix of ones.
    ids: `[batch, N]` int32 persistent object ids, -1 where absent.
    prior_state: each object's prior-RNN state, `[batch, N, hidden]` each.
    velocity: `[batch, N, 3]`, each object's last change of position
      `(0, dx, dy)` (0 for an object discovered in this frame).
  """
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  ids: jax.Array
  prior_state: networks.LSTMState
  velocity: jax.Array


class Carry(NamedTuple):
  """What frame `t` hands to frame `t + 1`.

  Attributes:
    objects: the frame's `Objects`.
    temporal: the temporal state `h^q`, `[batch, hidden]` each.
    next_id: `[batch]` int32, the id the next discovered object gets.
  """
  objects: Objects
  temporal: networks.LSTMState
  next_id: jax.Array


def initial_carry(config: APDRConfig, params, batch: int) -> Carry:
  """No objects, learned initial temporal state, ids from 0."""
  n, d = config.num_slots, config.air.z_what_dim
  neutral = jnp.array([config.air.scale_prior_mean, 0.0, 0.0])
  objects = Objects(
      z_where=jnp.broadcast_to(neutral, (batch, n, 3)), z_what=jnp.zeros((batch, n, d)),
      presence=jnp.zeros((batch, n)), ids=jnp.full((batch, n), -1, jnp.int32),
      prior_state=_call(config, params, APDRNetworks.prior_initial, (batch, n)),
      velocity=jnp.zeros((batch, n, 3)))
  return Carry(objects,
               _call(config, params, APDRNetworks.temporal_initial, batch),
               jnp.zeros((batch,), jnp.int32))


class Propagated(NamedTuple):
  """The propagation phase's samples and log-probabilities, `[batch, N, ...]`.

  `active` marks the slots that held an object in the previous frame (a
  survival decision was taken); `presence` is the survival bit `b^P`.
  """
  z_where: jax.Array
  z_what: jax.Array
  presence: jax.Array
  active: jax.Array
  log_q_presence: jax.Array
  log_q_z: jax.Array
  log_p_presence: jax.Array
  log_p_z: jax.Array
  baseline: jax.Array
  relation: networks.LSTMState  # after the last object: h^{P, k_t}
  prior_state: networks.LSTMState  # h^{prior}_t of each previous object
  # Survival probabilities, q's (before any warm-up floor) and the prior's.
  q_survival: jax.Array | None = None
  prior_survival: jax.Array | None = None
  # `[batch, H, W]`, every propagated object's drawing, where the scan over
  # objects already drew it (`propagation_input="residual"`); else None.
  canvas: jax.Array | None = None


def propagate(config: APDRConfig, params, image: jax.Array, carry: Carry,
              temporal: networks.LSTMState, rng: jax.Array,
              deterministic: bool = False,
              min_survival: jax.Array | float = 0.0,
              keep: jax.Array | None = None) -> Propagated:
  """Samples q^P(z^P_t, k_t | x_t, z_{t-1}, h^q_t) and scores it under p^P.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    image: `[batch, H, W]`, frame `t`.
    carry: the previous frame's objects.
    temporal: `h^q_t`.
    rng: a key.
    deterministic: posterior modes instead of samples.
    min_survival: a floor on q's survival probability (a training warm-up:
      near 1, objects must be tracked before they may be forgotten; q stays
      a proper distribution, so the bound stays valid).
    keep: optional `[batch, N]` in {0, 1}: objects with 0 are forgotten
      whatever q decides (`search_modes` proposes such structures; the
      decisions are then not q's samples and `log_q_presence` is not their
      probability).

  Returns:
    `Propagated`.
  """
  a = config.air
  prev = carry.objects
  batch, n = prev.presence.shape
  call = functools.partial(_call, config, params)
  # The prior's step for every object at once (eq. 16), then its heads.
  with jax.named_scope("prior"):
    prior_state = call(APDRNetworks.prior_step, prev.z_where, prev.z_what,
                       prev.prior_state)
    survival, (p_where_loc, p_where_scale), (p_what_loc, p_what_scale) = call(
        APDRNetworks.prior_heads, prior_state.hidden, _prior_where_offset(
            config, prev), prev.z_what)
  # Where q looks for each object, and the location its z_where is an offset
  # from. The prior's prediction knows the object's velocity, so the glimpse
  # is centred on the object even when it moves by more than the glimpse can
  # tolerate; q may depend on any function of the past, so the bound holds.
  anchor = (p_where_loc if config.propagation_glimpse == "prior"
            else prev.z_where)
  if config.ink_tracking_steps or config.ink_fit_steps:
    with jax.named_scope("ink_anchor"):
      anchor = ink.ink_anchor(config, params, image, prev, anchor)
    if not config.ink_gradient:
      # The anchor's value is exact, so the bound is; its gradient is left
      # out. A converged fit depends on the frame, not on where it started,
      # so its derivative by the previous latents is near 0; differentiating
      # through the fit made a training step 2.7 times slower (measured).
      anchor = jax.lax.stop_gradient(anchor)
    # Saved, not recomputed, under `log_weight_terms(remat=True)`: the fit is
    # a quarter of a frame's forward pass and its output is 3 numbers.
    anchor = checkpoint_name(anchor, "ink_anchor")
  explain_away = config.propagation_input == "residual"
  if explain_away:
    features = jnp.zeros((batch, n, 0))  # computed inside the scan
  else:
    # The glimpse around each anchor does not depend on the other objects:
    # extract and encode all of them before the sequential scan.
    tile = lambda x: jnp.repeat(x, n, axis=0)
    patches = glimpse.extract(tile(image), anchor.reshape(batch * n, 3),
                              a.glimpse_size, a.extract_method)
    features = call(APDRNetworks.glimpse_features,
                    patches.reshape(batch * n, -1)).reshape(batch, n, -1)

  def step(scan_carry, inputs):
    relation, canvas = scan_carry
    feat, where_anchor, what_prev, prior_hidden, active, keep_slot, key = (
        inputs)
    where_key, what_key, presence_key = jax.random.split(key, 3)
    # With "residual", object i looks at the frame minus what objects < i
    # drew (as discovery does), so a duplicate of an earlier object sees
    # the ink already explained away.
    seen = (_residual(image, canvas, config.residual_gain) if explain_away
            else image)
    if explain_away:
      feat = call(APDRNetworks.glimpse_features, glimpse.extract(
          seen, where_anchor, a.glimpse_size, a.extract_method).reshape(
              batch, -1))
    hidden = call(APDRNetworks.prop_hidden, feat, where_anchor, what_prev,
                  temporal.hidden, relation.hidden, prior_hidden)
    raw_prob, (where_loc, where_scale) = call(APDRNetworks.prop_heads, hidden,
                                              where_anchor)
    prob = jnp.maximum(raw_prob, min_survival)
    presence, z_where = air.sample_presence_and_where(
        presence_key, where_key, prob, where_loc, where_scale, active,
        deterministic)
    presence = presence * keep_slot
    patch = glimpse.extract(seen, z_where, a.glimpse_size, a.extract_method)
    what_loc, what_scale = call(APDRNetworks.prop_encode,
                                patch.reshape(batch, -1), hidden, what_prev)
    z_what = what_loc if deterministic else dist.normal_sample(
        what_key, what_loc, what_scale)
    log_q_z = presence * (
        dist.normal_log_prob(z_where, where_loc, where_scale).sum(-1) +
        dist.normal_log_prob(z_what, what_loc, what_scale).sum(-1))
    log_q_presence = active * dist.bernoulli_log_prob(presence, prob)
    new_relation = call(APDRNetworks.relation_step, z_where, z_what, presence,
                        relation)
    # Only objects that existed in the previous frame move the relation RNN.
    relation = jax.tree.map(
        lambda new, old: jnp.where(active[:, None] > 0, new, old),
        new_relation, relation)
    baseline = call(APDRNetworks.prop_baseline_value, hidden)
    if explain_away:
      decoded = air.decode(a, params["air"], z_what)
      if a.render_method == "separable":
        # One slot of `render_sum`: the same drawing, with its written-out
        # backward (autodiff's transposed-operand matmuls are slow on CPU).
        canvas = canvas + glimpse.render_sum(
            decoded[:, None], z_where[:, None], presence[:, None],
            a.canvas_size, a.canvas_size)
      else:
        canvas = canvas + presence[:, None, None] * glimpse.render(
            decoded, z_where, a.canvas_size, a.canvas_size, a.render_method)
    return (relation, canvas), (z_where, z_what, presence, log_q_presence,
                                log_q_z, baseline, raw_prob)

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  relation0 = call(APDRNetworks.relation_initial, batch)
  with jax.named_scope("object_scan"):
    (relation, canvas), outputs = jax.lax.scan(
        step, (relation0, jnp.zeros_like(image)),
        (swap(features), swap(anchor), swap(prev.z_what),
         swap(prior_state.hidden), swap(prev.presence),
         swap(jnp.ones_like(prev.presence) if keep is None else keep),
         jax.random.split(rng, n)), unroll=True)
  z_where, z_what, presence, log_q_presence, log_q_z, baseline, q_survival = (
      swap(x) for x in outputs)
  active = prev.presence
  log_p_presence = active * dist.bernoulli_log_prob(presence, survival)
  log_p_z = presence * (
      dist.normal_log_prob(z_where, p_where_loc, p_where_scale).sum(-1) +
      dist.normal_log_prob(z_what, p_what_loc, p_what_scale).sum(-1))
  return Propagated(z_where, z_what, presence, active, log_q_presence, log_q_z,
                    log_p_presence, log_p_z, baseline, relation, prior_state,
                    q_survival * active, survival * active,
                    canvas if explain_away else None)


def _residual(image: jax.Array, drawn: jax.Array,
              gain: float = 1.0) -> jax.Array:
  """`clip(image - gain * drawn, 0, 1)`: what a drawing leaves unexplained."""
  return jnp.clip(image - gain * drawn, 0.0, 1.0)



def _prior_where_offset(config: APDRConfig, objects: Objects) -> jax.Array:
  """What the prior's `z_where` mean is an offset from, `[batch, N, 3]`."""
  if config.constant_velocity:
    return objects.z_where + objects.velocity
  return objects.z_where


def _compact(config: APDRConfig, params, carry: Carry, prop: Propagated,
             disc: air.Slots) -> Objects:
  """Present objects to the front, propagated first, each in a stable order.

  Propagated objects keep their ids and prior states; discovered ones get
  `next_id, next_id + 1, ...` and the prior RNN's learned initial state.
  """
  batch, n = prop.presence.shape
  presence = jnp.concatenate([prop.presence, disc.presence], 1)  # [B, 2N]
  new_ids = carry.next_id[:, None] + jnp.arange(n, dtype=jnp.int32)[None]
  ids = jnp.concatenate([carry.objects.ids, new_ids], 1)
  fresh = _call(config, params, APDRNetworks.prior_initial, (batch, n))
  prior = jax.tree.map(lambda p, f: jnp.concatenate([p, f], 1),
                       prop.prior_state, fresh)
  # Stable: among present slots the order is kept (k_t + n_t <= N, so no
  # present object is ever cut off).
  order = jnp.argsort(1.0 - presence, axis=1, stable=True)[:, :n]
  take = lambda x: jnp.take_along_axis(
      x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
  kept = take(presence)
  # A propagated object's displacement; a discovered one has none yet. Only
  # the position moves with it: digits keep their size, and extrapolating a
  # change of scale made boxes grow or shrink frame after frame (measured).
  moved = (prop.z_where - carry.objects.z_where) * prop.presence[..., None]
  moved = moved.at[..., 0].set(0.0)
  velocity = jnp.concatenate([moved, jnp.zeros_like(disc.z_where)], 1)
  return Objects(
      z_where=take(jnp.concatenate([prop.z_where, disc.z_where], 1)),
      z_what=take(jnp.concatenate([prop.z_what, disc.z_what], 1)),
      presence=kept,
      ids=jnp.where(kept > 0, take(ids), -1),
      prior_state=jax.tree.map(take, prior),
      velocity=jnp.where(kept[..., None] > 0, take(velocity), 0.0))


def _clean(config: APDRConfig, objects: Objects) -> Objects:
  """Puts neutral latents (the prior mean) into absent slots.

  Absent slots carry whatever was compacted behind the present ones; a
  glimpse taken at a scale near 0 would be non-finite, and a mask multiplied
  with NaN is still NaN. `where` also stops their gradients.
  """
  a = config.air
  present = objects.presence[..., None] > 0
  neutral = jnp.array([a.scale_prior_mean, 0.0, 0.0])
  return objects._replace(
      z_where=jnp.where(present, objects.z_where, neutral),
      z_what=jnp.where(present, objects.z_what, 0.0))


class FrameOutputs(NamedTuple):
  """One frame's log-weight terms and what evaluation reads, `[batch, ...]`.

  Attributes:
    terms: `[batch, 2N + 1]`: per propagation slot and per discovery slot
      `log p - log q` of its decision and latents, then `log p(x_t | z_t)`.
    score_log_q: `[batch, 2N + 1]`, log q of each presence decision (0 for
      the likelihood column).
    baseline: `[batch, 2N + 1]`, NVIL's baseline per decision.
    log_likelihood: `[batch]`.
    kl: `[batch]`, `log q - log p` of the frame's latents.
    objects: the frame's compacted `Objects` (without the prior state).
    num_propagated: `[batch]`, `k_t`.
    num_discovered: `[batch]`, `n_t`.
    canvas: `[batch, H, W]` or None, the reconstruction (`air.composite`).
    q_survival: `[batch, N]`, q's survival probability of each previous
      object (before a warm-up floor; 0 for empty slots).
    prior_survival: `[batch, N]`, the prior's (0 for empty slots).
    log_joint: `[batch]`, `log p(x_t, z_t | z_{<t})`: the likelihood and
      every prior term of the frame, without q (what `search_modes`
      maximises).
  """
  terms: jax.Array
  score_log_q: jax.Array
  baseline: jax.Array
  log_likelihood: jax.Array
  kl: jax.Array
  z_where: jax.Array
  presence: jax.Array
  ids: jax.Array
  num_propagated: jax.Array
  num_discovered: jax.Array
  canvas: jax.Array | None
  q_survival: jax.Array
  prior_survival: jax.Array
  log_joint: jax.Array


def frame_step(config: APDRConfig, params, carry: Carry, image: jax.Array,
               image_gates: jax.Array, rng: jax.Array, rho: jax.Array,
               deterministic: bool = False, with_canvas: bool = False,
               min_survival: jax.Array | float = 0.0,
               keep: jax.Array | None = None):
  """One frame: propagate, discover, render, score, compact (Algorithm 1).

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    carry: the previous frame's `Carry`.
    image: `[batch, H, W]`.
    image_gates: `[batch, 4*lstm]`, AIR's image gates of this frame (unused,
      and may be None, when discovery looks at the residual).
    rng: a key.
    rho: the discovery prior's probability of one more object.
    deterministic: posterior modes instead of samples.
    with_canvas: also return the reconstruction.
    min_survival: floor on q's survival probability (see `propagate`).
    keep: optional `[batch, N]`, objects forced to be forgotten where 0 (see
      `propagate`).

  Returns:
    `(new Carry, FrameOutputs)`.
  """
  a = config.air
  prop_key, disc_key = jax.random.split(rng)
  carry = carry._replace(objects=_clean(config, carry.objects))
  prev = carry.objects
  with jax.named_scope("temporal"):
    temporal = _call(config, params, APDRNetworks.temporal_step, prev.z_where,
                     prev.z_what, prev.presence, carry.temporal)
  with jax.named_scope("propagation"):
    prop = propagate(config, params, image, carry, temporal, prop_key,
                     deterministic, min_survival, keep)
  num_propagated = prop.presence.sum(-1)
  max_steps = config.num_slots - num_propagated.astype(jnp.int32)
  render = lambda z_what, z_where, presence: glimpse.render_sum(
      air.decode(a, params["air"], z_what), z_where, presence, a.canvas_size,
      a.canvas_size)
  with jax.named_scope("propagation_render"):
    prop_canvas = (prop.canvas if prop.canvas is not None else
                   render(prop.z_what, prop.z_where, prop.presence))
  with jax.named_scope("discovery"):
    if config.discovery_input == "residual":
      seen = _residual(image, prop_canvas, config.residual_gain)
      image_gates = air.image_gates(a, params["air"], seen)
    else:
      seen = image
    disc = air.infer(a, params["air"], seen, disc_key, image_gates=image_gates,
                     context=prop.relation.hidden, max_steps=max_steps,
                     deterministic=deterministic)
    disc_log_p_presence, disc_log_p_z = air.prior_log_probs(a, disc, rho)
  with jax.named_scope("likelihood"):
    # Every present object of both phases (absent slots weigh 0).
    canvas = air.composite(a, prop_canvas + render(disc.z_what, disc.z_where,
                                                    disc.presence))
    log_lik = air.log_likelihood(a, image, canvas)
  prop_kl = (prop.log_q_presence + prop.log_q_z - prop.log_p_presence -
             prop.log_p_z)
  disc_kl = (disc.log_q_presence + disc.log_q_z - disc_log_p_presence -
             disc_log_p_z)
  terms = jnp.concatenate([-prop_kl, -disc_kl, log_lik[:, None]], 1)
  score_log_q = jnp.concatenate([prop.log_q_presence, disc.log_q_presence,
                                 jnp.zeros_like(log_lik)[:, None]], 1)
  disc_baseline = air.baseline_values(a, params["air"], disc.hidden)
  baseline = jnp.concatenate([prop.baseline, disc_baseline,
                              jnp.zeros_like(log_lik)[:, None]], 1)
  with jax.named_scope("compact"):
    objects = _compact(config, params, carry, prop, disc)
  num_discovered = disc.presence.sum(-1)
  new_carry = Carry(objects, temporal,
                    carry.next_id + num_discovered.astype(jnp.int32))
  outputs = FrameOutputs(
      terms, score_log_q, baseline, log_lik,
      prop_kl.sum(-1) + disc_kl.sum(-1), objects.z_where, objects.presence,
      objects.ids, num_propagated, num_discovered,
      canvas if with_canvas else None, prop.q_survival, prop.prior_survival,
      log_lik + (prop.log_p_presence + prop.log_p_z + disc_log_p_presence +
                 disc_log_p_z).sum(-1))
  return new_carry, outputs


class SequenceTerms(NamedTuple):
  """A sequence's log-weight, term by term, and the per-frame outputs.

  Attributes:
    terms: `[batch, T * (2N + 1)]`, frame after frame (see `FrameOutputs`);
      `terms.sum(-1)` is `sum_t w_t`, the sequence log-weight.
    score_log_q: `[batch, T * (2N + 1)]`.
    baseline: `[batch, T * (2N + 1)]`.
    log_likelihood: `[batch]`, summed over frames.
    kl: `[batch]`, summed over frames.
    frames: `FrameOutputs` with fields `[batch, T, ...]`.
  """
  terms: jax.Array
  score_log_q: jax.Array
  baseline: jax.Array
  log_likelihood: jax.Array
  kl: jax.Array
  frames: FrameOutputs


def image_gates(config: APDRConfig, params, images: jax.Array) -> jax.Array:
  """AIR's image gates of every frame at once: `[B, T, H, W] -> [B, T, 4L]`.

  With `discovery_input="residual"` discovery computes its gates from each
  frame's residual instead, and this returns an empty `[B, T, 0]`.
  """
  b, t = images.shape[:2]
  if config.discovery_input == "residual":
    return jnp.zeros((b, t, 0))
  gates = air.image_gates(config.air, params["air"],
                          images.reshape((b * t,) + images.shape[2:]))
  return gates.reshape(b, t, -1)


def log_weight_terms(config: APDRConfig, params, images: jax.Array,
                     rng: jax.Array, rho: jax.Array, *,
                     gates: jax.Array | None = None,
                     deterministic: bool = False,
                     with_canvas: bool = False,
                     min_survival: jax.Array | float = 0.0,
                     num_frames: jax.Array | None = None,
                     remat: bool = False) -> SequenceTerms:
  """Samples q over a sequence once per input and returns its log-weight.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rng: a key (one per frame is folded in).
    rho: scalar, the discovery prior's probability of one more object.
    gates: optional `[batch, T, 4*lstm]` from `image_gates`, to share it
      across samples.
    deterministic: posterior modes (evaluation).
    with_canvas: also return the reconstructions in `frames.canvas`.
    min_survival: floor on q's survival probability (see `propagate`).
    num_frames: optional int32 scalar, possibly traced: only the first
      `num_frames` frames are read (a curriculum stage). The later frames
      are skipped by a `lax.cond` (no work, forward or backward) and their
      outputs, terms included, are exactly 0, as if the sequence were cut
      there and its terms padded with zeros; one compiled step then serves
      every stage.
    remat: under autodiff, recompute each frame's forward pass in the
      backward pass instead of storing its intermediates for every frame
      (`jax.checkpoint`), except the ink anchor (a quarter of the forward
      pass, 3 numbers per object). Training uses it: on XLA:CPU the
      recomputation cost less than writing and reading the stored
      intermediates, and a skipped frame then stores nothing
      (docs/apdr_speed.md).

  Returns:
    `SequenceTerms`.
  """
  batch, total_frames = images.shape[:2]
  if gates is None:
    gates = image_gates(config, params, images)

  def step(carry, inputs):
    image, gate, index = inputs
    return frame_step(config, params, carry, image, gate,
                      jax.random.fold_in(rng, index), rho, deterministic,
                      with_canvas, min_survival)

  if remat:
    step = jax.checkpoint(
        step, policy=jax.checkpoint_policies.save_only_these_names(
            "ink_anchor"))
  if num_frames is not None:
    read = step

    def skip(carry, inputs):
      shapes = jax.eval_shape(read, carry, inputs)[1]
      return carry, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                 shapes)

    def step(carry, inputs):  # pylint: disable=function-redefined
      return jax.lax.cond(inputs[2] < num_frames, read, skip, carry, inputs)

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  _, frames = jax.lax.scan(
      step, initial_carry(config, params, batch),
      (swap(images), swap(gates), jnp.arange(total_frames)))
  frames = jax.tree.map(swap, frames)
  flat = lambda x: x.reshape(batch, -1)
  return SequenceTerms(flat(frames.terms), flat(frames.score_log_q),
                       flat(frames.baseline), frames.log_likelihood.sum(-1),
                       frames.kl.sum(-1), frames)


def sample_log_weight_terms(config: APDRConfig, params, images: jax.Array,
                            rng: jax.Array, rho: jax.Array, num_samples: int,
                            **kwargs) -> SequenceTerms:
  """`num_samples` samples of q per sequence in one pass.

  The samples are folded into the batch (row `k * batch + b` is sample `k`
  of sequence `b`): one pass over `K * batch` rows runs many times faster
  on XLA:CPU than `K` passes over `batch` rows (docs/apdr_speed.md). The
  image gates are computed once per sequence.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rng: one key for all samples.
    rho: scalar, the discovery prior's probability of one more object.
    num_samples: `K`.
    **kwargs: `log_weight_terms`'s keyword arguments (`gates` of the
      `batch` sequences, not tiled).

  Returns:
    `SequenceTerms` with leaves `[K, batch, ...]`.
  """
  batch = images.shape[0]
  gates = kwargs.pop("gates", None)
  if gates is None:
    gates = image_gates(config, params, images)
  tile = lambda x: jnp.broadcast_to(x[None], (num_samples,) + x.shape).reshape(
      (num_samples * batch,) + x.shape[1:])
  out = log_weight_terms(config, params, tile(images), rng, rho,
                         gates=tile(gates), **kwargs)
  return jax.tree.map(
      lambda x: x.reshape((num_samples, batch) + x.shape[1:]), out)


def search_candidates(num_slots: int) -> jax.Array:
  """The structures `search_modes` tries each frame, `[N + 2, N]` keep-masks:
  q's modes as they are, each previous object forgotten in turn, and all
  forgotten (discovery then reads the whole frame, as AIR would)."""
  ones = jnp.ones((1, num_slots))
  return jnp.concatenate([ones, 1.0 - jnp.eye(num_slots),
                          jnp.zeros((1, num_slots))])


def _search_score(outputs: FrameOutputs, score: str) -> jax.Array:
  if score == "joint":
    return outputs.log_joint
  # The continuous latents' log p - log q at q's modes (a Laplace estimate
  # of their integral, with q's covariance) plus log p of the structure:
  # the presence decisions' log q is added back.
  return outputs.terms.sum(-1) + outputs.score_log_q.sum(-1)


def search_modes(config: APDRConfig, params, images: jax.Array,
                 rho: jax.Array, margin: float = 0.0, score: str = "laplace",
                 restart: bool = True,
                 with_canvas: bool = False) -> FrameOutputs:
  """Posterior modes refined by a greedy search over which objects survive.

  q's modes keep an object that drifted off its digit, or one that covers two
  digits which were merged when first seen, and discovery then adds or misses
  one: the error persists for the rest of the sequence. Here every frame
  tries, from the previous frame's chosen structure, the keep-masks of
  `search_candidates` (q's modes for everything else, discovery included)
  and, with `restart`, AIR's reading of the frame alone (fresh temporal
  state, ids continuing, the prior's price of forgetting every previous
  object added to its score). An alternative replaces q's modes when its
  score beats theirs by more than `margin` nats. No ground truth is used;
  `N + 2` (+1) frame steps per frame instead of one.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rho: scalar, the discovery prior's probability of one more object (the
      one training ended with: it prices a discovery).
    margin: nats an alternative must win by (0: plain argmax; a huge value
      gives q's modes).
    score: "laplace": the continuous latents' `log p - log q` at q's modes
      (a Laplace estimate of their integral with q's covariance) plus
      `log p` of the structure and the likelihood; "joint": `log_joint`.
    restart: also try AIR's fresh reading of the frame.
    with_canvas: also return the reconstructions.

  Returns:
    `FrameOutputs` with fields `[batch, T, ...]`, of the chosen structures
    (for a restart, `terms`, `kl` and `log_joint` leave out the forgetting
    of the previous objects).
  """
  if score not in ("laplace", "joint"):
    raise ValueError(f"score={score!r}; use 'laplace' or 'joint'")
  batch = images.shape[0]
  keeps = search_candidates(config.num_slots)
  rows = jnp.arange(batch)

  def step(carry, inputs):
    image, gate, index = inputs
    key = jax.random.fold_in(jax.random.key(0), index)  # unused: modes

    def candidate(keep):
      return frame_step(config, params, carry, image, gate, key, rho,
                        deterministic=True, with_canvas=with_canvas,
                        keep=jnp.broadcast_to(keep, (batch, config.num_slots)))

    carries, outputs = jax.vmap(candidate)(keeps)  # leaves [C, batch, ...]
    value = _search_score(outputs, score)
    if restart:
      # AIR's reading of the frame alone, as in frame 0 (ids continue), with
      # the prior's price of forgetting every previous object added.
      fresh = initial_carry(config, params, batch)._replace(
          next_id=carry.next_id)
      fresh_carry, fresh_out = frame_step(
          config, params, fresh, image, gate, key, rho, deterministic=True,
          with_canvas=with_canvas)
      # The all-forgotten candidate's prior survival (the last keep-mask),
      # priced as `propagate` prices a forgetting.
      forget_all = outputs.prior_survival[-1]  # [batch, N], 0 where absent
      forget_cost = jnp.sum(carry.objects.presence * dist.bernoulli_log_prob(
          jnp.zeros_like(forget_all), forget_all), -1)
      stack = lambda many, one: jax.tree.map(
          lambda m, o: jnp.concatenate([m, o[None]]), many, one)
      carries, outputs = stack(carries, fresh_carry), stack(outputs, fresh_out)
      value = jnp.concatenate(
          [value, (_search_score(fresh_out, score) + forget_cost)[None]])
    gain = value - value[0]  # [C, batch]
    gain = jnp.where(jnp.isnan(gain), -jnp.inf, gain)  # argmax favours NaN
    gain = jnp.where(jnp.arange(value.shape[0])[:, None] == 0, margin, gain)
    best = jnp.argmax(gain, axis=0)  # [batch]; ties: q's modes
    pick = lambda tree: jax.tree.map(lambda x: x[best, rows], tree)
    return pick(carries), pick(outputs)

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  _, frames = jax.lax.scan(step, initial_carry(config, params, batch),
                           (swap(images), swap(image_gates(config, params,
                                                           images)),
                            jnp.arange(images.shape[1])))
  return jax.tree.map(swap, frames)


def predict(config: APDRConfig, params, images: jax.Array, num_future: int,
            rng: jax.Array, rho: jax.Array, deterministic: bool = True):
  """Infers the observed frames, then rolls the prior forward `num_future`.

  Every object propagates through its prior RNN (survival and transition; the
  means when `deterministic`), and new objects come from the discovery prior
  (AIR's prior, truncated at `N - k_t`).

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T0, H, W]`, the conditioning frames.
    num_future: frames to predict.
    rng: a key.
    rho: the discovery prior's ρ.
    deterministic: use means and `survival > 0.5` instead of samples.

  Returns:
    dict: `canvas [batch, num_future, H, W]` (the mean of p(x | z)),
    `z_where [batch, num_future, N, 3]`, `presence`, `ids` `[batch,
    num_future, N]`.
  """
  a = config.air
  batch, observed = images.shape[:2]
  infer_key, future_key = jax.random.split(rng)
  gates = image_gates(config, params, images)

  def observe(carry, inputs):
    image, gate, index = inputs
    carry, _ = frame_step(config, params, carry, image, gate,
                          jax.random.fold_in(infer_key, index), rho,
                          deterministic)
    return carry, None

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  carry, _ = jax.lax.scan(observe, initial_carry(config, params, batch),
                          (swap(images), swap(gates), jnp.arange(observed)))

  def imagine(objects_next_id, key):
    objects, next_id = objects_next_id
    keys = jax.random.split(key, 5)
    call = functools.partial(_call, config, params)
    state = call(APDRNetworks.prior_step, objects.z_where, objects.z_what,
                 objects.prior_state)
    survival, (where_loc, where_scale), (what_loc, what_scale) = call(
        APDRNetworks.prior_heads, state.hidden,
        _prior_where_offset(config, objects), objects.z_what)
    if deterministic:
      alive = (survival > 0.5).astype(survival.dtype) * objects.presence
      z_where, z_what = where_loc, what_loc
    else:
      alive = dist.bernoulli_sample(keys[0], survival) * objects.presence
      z_where = dist.normal_sample(keys[1], where_loc, where_scale)
      z_what = dist.normal_sample(keys[2], what_loc, what_scale)
    # Discovery prior: Bernoulli(rho) per free slot until the first zero.
    free = config.num_slots - alive.sum(-1)
    born = jnp.cumprod(jax.random.bernoulli(keys[3], rho, alive.shape), 1)
    born = born * (jnp.arange(config.num_slots)[None] < free[:, None])
    if deterministic:
      born = jnp.zeros_like(born)
    _, new_where, new_what, _ = air.sample_prior(a, params["air"], keys[4],
                                                 batch, 1.0)
    prop = Propagated(z_where, z_what, alive, objects.presence, *(
        (jnp.zeros_like(alive),) * 5), None, state)
    disc = air.Slots(new_where, new_what, born.astype(alive.dtype), None, None,
                     None, None, None, None)
    carry_like = Carry(objects, None, next_id)
    new = _compact(config, params, carry_like, prop, disc)
    canvas = air.composite(a, air.render_slots(a, params["air"], air.Slots(
        new.z_where, new.z_what, new.presence, *([None] * 6))))
    next_id = next_id + born.sum(-1).astype(jnp.int32)
    return (new, next_id), (canvas, new.z_where, new.presence, new.ids)

  _, (canvas, z_where, presence, ids) = jax.lax.scan(
      imagine, (carry.objects, carry.next_id),
      jax.random.split(future_key, num_future))
  return dict(canvas=swap(canvas), z_where=swap(z_where),
              presence=swap(presence), ids=swap(ids))
