"""A seconds-long config for tests and smoke runs: sprites on a 24x24 canvas.

  python -m launch.train --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "sprites"
  config.data.canvas_size = 32
  config.data.num_train_scenes = 256
  config.data.num_test_scenes = 64
  config.model.num_slots = 2
  config.model.glimpse_size = 8
  config.model.z_what_dim = 4
  config.model.lstm_size = 16
  config.model.mlp_size = 16
  config.batch_size = 8
  config.num_steps = 4
  config.log_every = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.eval_batch_size = 32
  config.final_iwae_samples = 4
  config.final_eval_scenes = 64
  config.progress_bar = False
  return config
