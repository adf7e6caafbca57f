"""APDR's architecture: `APDRConfig`, the fields every part reads."""

import dataclasses

from apdr_jax import air


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
    survival_ink: the prior's survival probability of an object that drew
      less ink than this on the previous frame (the sum of its own
      rendering on the canvas, in pixel intensities) is scaled down in
      proportion, `p = sigmoid(f(h)) * clip(ink / survival_ink, 1e-3, 1)`:
      an object that draws nothing (a digit that has left, a blank
      "ghost") then costs about `-log(ink / survival_ink)` nats a frame to
      keep, where the likelihood, which does not see it, charged nothing.
      0 = off (the prior ignores the ink).
    survival_ink_q: q's survival probability is scaled by the same factor
      (a function of the past, so the bound holds): q then forgets an
      object that drew nothing without having to learn to, where VIMCO
      rarely samples a forgetting to learn from (measured: with the prior's
      factor alone q kept its ghosts).
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
  survival_ink: float = 0.0
  survival_ink_q: bool = False

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
    if self.survival_ink < 0:
      raise ValueError(f"survival_ink={self.survival_ink} must be >= 0")
    if self.survival_ink_q and not self.survival_ink:
      raise ValueError("survival_ink_q needs survival_ink > 0")
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
