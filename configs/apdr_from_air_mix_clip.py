"""`apdr_from_air_mix.py` with the clipped canvas, grafted from
`air_moving_mnist_clip.py`; the final evaluation reads the best of 100
samples in both directions (inherited, about 11 minutes).

  python -m launch.train --config=configs/air_moving_mnist_clip.py --workdir=runs/air_frames_clip
  python -m launch.train --config=configs/apdr_from_air_mix_clip.py \\
      --workdir=runs/mix_clip --config.init_air_from=runs/air_frames_clip

Measured 2026-12-06 on the 2-core CPU, seeds 0-2 of both steps
(`--config.seed=S`), on 200 held-out sequences read both ways: best of
100, counts 96.85-97.35% and tracking consistency 0.953-0.968; best of 20
(two draws per seed), 95.7-97.3% and 0.944-0.960. IWAE 6,099.6-6,107.9
against AIR's 5,808.6-5,817.3. Seed 2 alone on the machine: 1,820 s of
training, 33 min 22 s wall with compile and a best-of-20 final evaluation
(README, "Three seeds of the clipped canvas").
"""

from configs import apdr_from_air_mix


def get_config():
  config = apdr_from_air_mix.get_config()
  config.model.canvas = "clip"
  return config
