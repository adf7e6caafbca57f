"""`air_moving_mnist.py` with the clipped canvas (`model.canvas='clip'`).

  python -m launch.train --config=configs/air_moving_mnist_clip.py --workdir=runs/air_frames_clip

The canvas is min(sum of drawings, 1), the way the data compose overlapping
digits (README, "A likely cause"). Measured 2026-12-06 on the 2-core CPU,
seeds 0-2: 94.65-95.55% held-out per-frame counts, IWAE 5,808.6-5,817.3 per
sequence; seed 2 alone on the machine: 247 s of training, 4 min 19 s wall.
"""

from configs import air_moving_mnist


def get_config():
  config = air_moving_mnist.get_config()
  config.model.canvas = "clip"
  return config
