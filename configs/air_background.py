"""AIR with notes §7's background component on digits over photographs.

  python -m launch.train --config=configs/air_background.py --workdir=/tmp/air_bg

`configs/air_multi_mnist.py` (its data, prior and schedule) with the digits
drawn over crops of natural photographs, a new crop per image
(`data.background='texture'`, `background_varies=True`; held-out crops come
from parts of the photographs never trained on), and three choices, each
measured in docs/backgrounds.md:

* `model.background='mlp'` decoded at 6x6 and resized to the canvas
  (`background_resolution=6`), drawn behind the objects ('over'): at the
  canvas's resolution (or 10x10) the background draws blurred digits, and the
  bound itself prefers that to objects (no object survives training).
* `background_warmup_steps=2500`: the background is flat (its spatial mean)
  until then. With its detail from the start it takes the digits' mean ink
  before the objects' decoder has learnt anything, and presence collapses to
  0 even on black data.
* `presence_warmup_steps=2500`: q's presence probability is at least 0.5
  until then, so the objects are drawn, and learn the digits, on canvases
  where a digit's contrast is low (without it, none survives on grey).

Time on the 2-core CPU: about 5 minutes of training (20k steps) plus the
final evaluation.
"""

from configs import default


def get_config():
  config = default.get_config()
  # configs/air_multi_mnist.py's data, prior and schedule.
  config.data.overlap = "none"
  config.rho_start = 1e-5
  config.rho_end = 1e-5
  config.learning_rate = 3e-4
  config.baseline_learning_rate = 3e-3
  config.lr_schedule = "cosine"
  config.lr_final_fraction = 0.0
  config.model.image_rank = 128
  # The background: data over photographs, the component and its warm-ups.
  config.data.background = "texture"
  config.data.background_varies = True
  config.model.background = "mlp"
  config.model.background_resolution = 6
  config.background_warmup_steps = 2500
  config.presence_warmup_steps = 2500
  return config
