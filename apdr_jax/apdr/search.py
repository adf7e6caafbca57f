"""A greedy search over which objects survive, on top of q's modes."""

import jax
import jax.numpy as jnp

from apdr_jax import distributions as dist
from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.frame import FrameOutputs
from apdr_jax.apdr.frame import frame_step
from apdr_jax.apdr.sequence import image_gates
from apdr_jax.apdr.state import Carry
from apdr_jax.apdr.state import initial_carry


def search_candidates(num_slots: int) -> jax.Array:
  """The structures `search_modes` tries each frame, `[N + 2, N]` keep-masks:
  q's modes as they are, each previous object forgotten in turn, and all
  forgotten (discovery then reads the whole frame, as AIR would)."""
  ones = jnp.ones((1, num_slots))
  return jnp.concatenate([ones, 1.0 - jnp.eye(num_slots),
                          jnp.zeros((1, num_slots))])


def _search_score(outputs: FrameOutputs) -> jax.Array:
  """A structure's score, `[..., batch]`: the continuous latents'
  `log p - log q` at q's modes (a Laplace estimate of their integral, with
  q's covariance), plus `log p` of the structure and the likelihood (the
  presence decisions' log q is added back)."""
  return outputs.terms.sum(-1) + outputs.score_log_q.sum(-1)


def _fresh_reading(config: APDRConfig, params, carry: Carry,
                   outputs: FrameOutputs, image: jax.Array, gate: jax.Array,
                   key: jax.Array, rho: jax.Array, with_canvas: bool):
  """AIR's reading of the frame alone, as in frame 0 (ids continue), scored
  with the prior's price of forgetting every previous object added.

  Returns:
    `(Carry, FrameOutputs, score [batch])`.
  """
  batch = image.shape[0]
  fresh = initial_carry(config, params, batch)._replace(next_id=carry.next_id)
  fresh_carry, fresh_out = frame_step(
      config, params, fresh, image, gate, key, rho, deterministic=True,
      with_canvas=with_canvas)
  # The all-forgotten candidate's prior survival (the last keep-mask of
  # `outputs`), priced as `propagate` prices a forgetting.
  forget_all = outputs.prior_survival[-1]  # [batch, N], 0 where absent
  forget_cost = jnp.sum(carry.objects.presence * dist.bernoulli_log_prob(
      jnp.zeros_like(forget_all), forget_all), -1)
  return fresh_carry, fresh_out, _search_score(fresh_out) + forget_cost


def search_modes(config: APDRConfig, params, images: jax.Array,
                 rho: jax.Array, margin: float = 0.0,
                 with_canvas: bool = False) -> FrameOutputs:
  """Posterior modes refined by a greedy search over which objects survive.

  q's modes keep an object that drifted off its digit, or one that covers two
  digits which were merged when first seen, and discovery then adds or misses
  one: the error persists for the rest of the sequence. Here every frame
  tries, from the previous frame's chosen structure, the keep-masks of
  `search_candidates` (q's modes for everything else, discovery included)
  and AIR's reading of the frame alone (`_fresh_reading`). An alternative
  replaces q's modes when its score beats theirs by more than `margin` nats.
  No ground truth is used; `N + 3` frame steps per frame instead of one.

  Args:
    config: the architecture.
    params: `APDRNetworks` parameters.
    images: `[batch, T, H, W]` in [0, 1].
    rho: scalar, the discovery prior's probability of one more object (the
      one training ended with: it prices a discovery).
    margin: nats an alternative must win by (0: plain argmax; a huge value
      gives q's modes).
    with_canvas: also return the reconstructions.

  Returns:
    `FrameOutputs` with fields `[batch, T, ...]`, of the chosen structures
    (for a restart, `terms`, `kl` and `log_joint` leave out the forgetting
    of the previous objects).
  """
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
    fresh_carry, fresh_out, fresh_value = _fresh_reading(
        config, params, carry, outputs, image, gate, key, rho, with_canvas)
    value = jnp.concatenate([_search_score(outputs), fresh_value[None]])
    stack = lambda many, one: jax.tree.map(
        lambda m, o: jnp.concatenate([m, o[None]]), many, one)
    carries, outputs = stack(carries, fresh_carry), stack(outputs, fresh_out)
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
