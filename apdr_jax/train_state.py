"""`TrainState`: everything a training step reads and writes (one checkpoint
pytree), and its initial value for a run config."""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import apdr
from apdr_jax import objectives
from apdr_jax import run_config
from apdr_jax.optimizer import make_optimizer


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


def create_train_state(config, rng: jax.Array) -> TrainState:
  mc = run_config.model_config(config)
  params = (apdr.init_params(mc, rng) if run_config.is_sequential(config)
            else air.init_params(mc, rng))
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=make_optimizer(config).init(params),
      nvil=objectives.nvil_init(run_config.num_terms(config)),
      nonfinite_step=jnp.full((), -1, jnp.int32))
