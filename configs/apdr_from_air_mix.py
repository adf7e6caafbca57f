"""`apdr_from_air_refresh` trained on sequences half of which have digits
entering and leaving (the held-out sequences are unchanged).

  python -m launch.train --config=configs/air_moving_mnist.py --workdir=runs/air_frames
  python -m launch.train --config=configs/apdr_from_air_mix.py \\
      --workdir=runs/apdr_mix --config.init_air_from=runs/air_frames

On the plain data no object ever leaves and none arrives after frame 0, so
q's survival and its discovery after frame 0 are never trained to fire: in
`runs/r5` (`apdr_from_air_refresh`) an error made once (a duplicate kept, or
two digits merged in frame 0 and never split) lasted to the last frame
(README, "4,000 steps and a search over forgetting"). Here half the
training sequences follow the entering-and-leaving rule, so q learns to drop
an object whose ink is gone and to discover ink that nothing explains. The
schedule is `runs/r5`'s (4,000 steps, all 10 frames from step 3,500; about
85 minutes on the 2-core CPU), so the two runs differ in the data only.
"""

from configs import apdr_from_air_refresh


def get_config():
  config = apdr_from_air_refresh.get_config()
  config.data.train_enter_leave_fraction = 0.5
  config.num_steps = 4_000
  return config
