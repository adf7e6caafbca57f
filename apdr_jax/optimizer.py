"""The optimiser: Adam with a learning-rate schedule, a separate rate for the
NVIL baselines, and gradient clipping by parameter group."""

import jax
import jax.numpy as jnp
import optax


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
  `clip_by_group_norm`, applied by the update step).

  With `lr_schedule='cosine'` both rates follow a cosine from their value at
  step 0 to `lr_final_fraction` of it at `lr_decay_steps` (0: `num_steps`),
  and stay there. With 'constant' the optimiser state has no step count, as
  in runs from before the schedule.
  """
  transforms = [optax.scale_by_adam()]
  if config.get("lr_schedule", "constant") == "cosine":
    decay_steps = config.get("lr_decay_steps", 0) or config.num_steps
    transforms.append(optax.scale_by_schedule(optax.cosine_decay_schedule(
        1.0, decay_steps, alpha=config.lr_final_fraction)))
  transforms.append(scale_by_group_rate(config.learning_rate,
                                        config.baseline_learning_rate))
  return optax.chain(*transforms)
