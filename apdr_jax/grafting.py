"""APDR from a trained AIR: discovery and the decoder start as the AIR run's
(`config.init_air_from`)."""

import dataclasses

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import checkpoints
from apdr_jax import run_config
from apdr_jax.errors import CheckpointError
from apdr_jax.errors import ConfigError
from apdr_jax.optimizer import make_optimizer
from apdr_jax.train_state import TrainState
from apdr_jax.train_state import create_train_state


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
  if run_config.is_sequential(air_config):
    raise ConfigError(f"init_air_from={workdir!r} is an APDR run; give an "
                      "AIR workdir")
  # A field the AIR run's config predates has the model's default there.
  defaults = dataclasses.asdict(air.AIRConfig())
  there = lambda key: air_config.model.get(key, defaults.get(key))
  different = {key: (there(key), value)
               for key, value in config.model.items()
               if there(key) != value}
  if different:
    listed = ", ".join(f"{key}={air!r} there, {ours!r} here"
                       for key, (air, ours) in sorted(different.items()))
    raise ConfigError(f"init_air_from={workdir!r}: config.model differs ("
                      f"{listed}); pass the AIR run's values, e.g. "
                      f"--config.model.{min(different)}="
                      f"{different[min(different)][0]}")
  target = create_train_state(air_config, jax.random.key(0))
  step, restored = checkpoints.restore_latest(
      checkpoints.manager(workdir, read_only=True), target,
      set_aside_damaged=False)  # another run's folder: report, touch nothing
  if restored is None:
    raise CheckpointError(
        f"init_air_from: no checkpoint under {workdir}/checkpoints")
  params = graft_air_params(jax.device_get(state.params),
                            jax.device_get(restored.params))
  print(f"Discovery and decoder initialised from {workdir} (AIR, step {step}).",
        flush=True)
  return state.replace(params=params,
                       opt_state=make_optimizer(config).init(params))
