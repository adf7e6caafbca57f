"""AIR with notes §7's background component on digits over photographs.

  python -m launch.train --config=configs/air_background.py --workdir=/tmp/air_bg

`configs/air_multi_mnist.py` (its data, prior and schedule) with the digits
drawn over crops of natural photographs, a new crop per image
(`data.background='texture'`, `background_varies=True`; the held-out scenes'
crops come from parts of the photographs never trained on), and the
background `b = g(h^N)` decoded by an MLP and drawn behind the objects
(`model.background='mlp'`, `background_compose='over'`). Every level, with and
without the component: docs/backgrounds.md.
"""

from configs import air_multi_mnist


def get_config():
  config = air_multi_mnist.get_config()
  config.data.background = "texture"
  config.data.background_varies = True
  config.model.background = "mlp"
  return config
