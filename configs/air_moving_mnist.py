"""The frame-by-frame AIR baseline on APDR's moving multi-MNIST sequences.

  python -m launch.train --config=configs/air_moving_mnist.py --workdir=runs/air_frames

AIR trains on every frame of the training sequences as independent scenes
(NVIL, as in `air_multi_mnist.py`) and is evaluated on the held-out
sequences exactly like APDR: per-frame counts, per-sequence ELBO and IWAE
(sums of per-frame bounds), tracking with its slot index as the id.
"""

from configs import apdr_moving_mnist
from configs import default


def get_config():
  config = default.get_config()
  sequences = apdr_moving_mnist.get_config()
  config.data = sequences.data
  config.final_iwae_samples = sequences.final_iwae_samples
  config.final_eval_scenes = sequences.final_eval_scenes
  config.eval_batch_size = 500
  return config
