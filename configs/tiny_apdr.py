"""A seconds-long APDR config for tests and smoke runs: moving sprites.

  python -m launch.train --config=configs/tiny_apdr.py --workdir=/tmp/tiny_apdr
"""

from configs import tiny


def get_config():
  config = tiny.get_config()
  config.model_name = "apdr"
  config.data.kind = "sequences"
  config.data.num_frames = 3
  config.data.num_train_scenes = 64
  config.data.num_test_scenes = 8
  config.data.canvas_size = 32
  config.apdr.hidden_size = 12
  config.apdr.relation_size = 8
  config.estimator = "vimco"
  config.num_samples = 2
  config.batch_size = 8
  config.curriculum_start_frames = 2
  config.curriculum_steps_per_frame = 2
  config.eval_batch_size = 8
  config.final_iwae_samples = 2
  config.final_eval_scenes = 8
  return config
