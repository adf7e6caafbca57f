"""A seconds-long APDR config for tests and smoke runs: moving sprites.

  python -m launch.train --config=configs/tiny_apdr.py --workdir=/tmp/tiny_apdr
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model_name = "apdr"
  config.data.source = "sprites"
  config.data.kind = "sequences"
  config.data.canvas_size = 32
  config.data.num_frames = 3
  config.data.num_train_scenes = 64
  config.data.num_test_scenes = 8
  config.model.num_slots = 2
  config.model.glimpse_size = 8
  config.model.z_what_dim = 4
  config.model.lstm_size = 16
  config.model.mlp_size = 16
  config.apdr.hidden_size = 12
  config.apdr.relation_size = 8
  # One step of each kind: the ink anchor runs, at half its compile time.
  config.apdr.ink_tracking_steps = 1
  config.apdr.ink_fit_steps = 1
  config.estimator = "vimco"
  config.num_samples = 2
  config.batch_size = 8
  config.num_steps = 4
  config.curriculum_start_frames = 2
  config.curriculum_steps_per_frame = 2
  config.log_every = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.eval_batch_size = 8
  config.final_iwae_samples = 2
  config.final_eval_scenes = 8
  config.progress_bar = False
  return config
