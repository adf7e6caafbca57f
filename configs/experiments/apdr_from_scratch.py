"""APDR trained from scratch (no AIR stage), with the notes' summed canvas.

  python -m launch.train --config=configs/experiments/apdr_from_scratch.py --workdir=runs/apdr_from_scratch

What it showed (2026-11-26, docs/): after 2,000 steps on the 2-core CPU every
digit was explained by 2-3 objects (31% per-frame counts, empty frames only):
discovering an object costs -log rho once per sequence while its
reconstruction pays in every frame, so extra objects are cheap early on. It
is why `apdr_moving_mnist.py` starts from a trained frame-by-frame AIR.
Curriculum: 3 frames first, one more every 1,000 steps (DESIGN §4).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model_name = "apdr"
  config.data.kind = "sequences"
  config.data.num_train_scenes = 10_000  # sequences
  config.data.num_test_scenes = 500
  config.data.num_frames = 10
  config.estimator = "vimco"
  config.num_samples = 5
  config.batch_size = 16
  config.num_steps = 20_000
  config.curriculum_start_frames = 3
  config.curriculum_steps_per_frame = 1_000
  config.rho_anneal_steps = 10_000
  config.eval_every = 1_000
  config.checkpoint_every = 1_000
  config.eval_batch_size = 50
  config.final_iwae_samples = 20
  config.final_eval_scenes = 200
  config.model.image_rank = 128  # as configs/air_multi_mnist.py (faster)
  # Forgetting costs -log(1e-4) = 9.2 nats at first (SQAIR's code starts its
  # prior at sigmoid(10)). Propagated locations start with a prior std of
  # 0.03 (0.75 px) and q's with 0.01 (0.25 px): see `apdr.APDRConfig`.
  config.apdr.prior_survival_init = 0.9999
  config.apdr.transition_scale_init = 0.03
  config.apdr.posterior_scale_init = 0.01
  return config
