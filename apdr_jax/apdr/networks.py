"""APDR's networks (Flax linen): inference (temporal state, propagation,
relation RNN) and the propagation prior. AIR's networks live under `air`:
discovery and the decoder both phases share."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import networks
from apdr_jax.apdr.config import APDRConfig


def logit(p: float) -> float:
  return math.log(p / (1.0 - p))


def inverse_softplus(y: float) -> float:
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
        bias_init=nn.initializers.constant(logit(c.survival_init)))
    # Starts as precise as the prior's transition: a propagated object that
    # is sampled a few pixels off its digit costs hundreds of nats, and
    # rediscovering it looked cheaper than tracking it (measured).
    self.prop_where = networks.GaussianHead(
        3, scale_bias=inverse_softplus(posterior_scale),
        zero_loc=c.zero_init_transitions)
    # q's z_what starts as the previous z_what with a small std, and the
    # prior's transition starts with the same small std: a propagated object
    # then costs ~0 nats and redraws the same digit, where a fresh one costs
    # -log rho plus its KL from N(0, I). With std 1 (or a random encoder),
    # forgetting every object and rediscovering it was cheaper, and training
    # learned to propagate nothing (measured: 0.01 objects per frame).
    self.prop_what = networks.GaussianHead(
        a.z_what_dim, hidden_sizes=(a.mlp_size,),
        scale_bias=inverse_softplus(posterior_scale),
        zero_loc=c.zero_init_transitions)
    self.relation_rnn = networks.LSTM(c.relation_size)
    self.prop_baseline = networks.MLP((a.mlp_size,), 1)
    # Propagation prior: one RNN per object with shared weights.
    self.prior_rnn = networks.LSTM(c.hidden_size)
    self.prior_survival = nn.Dense(
        1, kernel_init=small,
        bias_init=nn.initializers.constant(logit(
            c.prior_survival_init or c.survival_init)))
    self.prior_where = networks.GaussianHead(
        3, scale_bias=inverse_softplus(c.transition_scale_init),
        zero_loc=c.zero_init_transitions)
    self.prior_what = networks.GaussianHead(
        a.z_what_dim, scale_bias=inverse_softplus(
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


def call(config: APDRConfig, params, method, *args):
  """Applies one method of `APDRNetworks(config)` to `args`."""
  return APDRNetworks(config).apply({"params": params}, *args, method=method)
