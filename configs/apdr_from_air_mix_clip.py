"""`apdr_from_air_mix.py` with the clipped canvas, grafted from
`air_moving_mnist_clip.py`; the final evaluation reads the best of 20
samples in both directions.

  python -m launch.train --config=configs/air_moving_mnist_clip.py --workdir=runs/air_frames_clip
  python -m launch.train --config=configs/apdr_from_air_mix_clip.py \\
      --workdir=runs/mix_clip --config.init_air_from=runs/air_frames_clip

Measured 2026-12-06 (one seed; 2,296 s of training and 66 s of compile,
partly beside other jobs): on 200 held-out sequences, best of 20 in both
directions, counts 97.3%, tracking consistency 0.960, IWAE 6,102.2 (README,
"A likely cause").
"""

from configs import apdr_from_air_mix


def get_config():
  config = apdr_from_air_mix.get_config()
  config.model.canvas = "clip"
  config.best_of = 20
  return config
