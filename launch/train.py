r"""Trains a model from a config.

  python -m launch.train --config=configs/air_multi_mnist.py --workdir=/tmp/air \
      [--config.num_steps=20000] [--config.seed=1]

Re-running with the same workdir resumes from its newest checkpoint.
Multi-host: add --coordinator_address=HOST:PORT --num_processes=P --process_id=I
(or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

from absl import app
from absl import flags
from absl import logging

from launch import common

_CONFIG = common.define_config_file(
    "config", "configs/air_multi_mnist.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics "
                               "and pictures go.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  common.initialize_distributed()
  from apdr_jax import train  # after jax.distributed is set up
  with common.user_errors():
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(common.format_result(result), flush=True)


if __name__ == "__main__":
  common.define_distributed_flags()
  app.run(main, flags_parser=common.parse_flags)
