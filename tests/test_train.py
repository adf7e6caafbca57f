"""The trainer on a tiny config: one step, no recompiles, resume, non-finite stop."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import checkpoints
from apdr_jax import input_pipeline
from apdr_jax import parallel
from apdr_jax import run_config
from apdr_jax import train
from apdr_jax.errors import ConfigError
from configs import tiny


def _config(**overrides):
  config = tiny.get_config()
  config.num_devices = 1
  config.update(overrides)
  return config


def _train_images(config, num=32):
  size = config.data.canvas_size
  return jax.random.randint(jax.random.key(9), (num, size, size), 0, 256
                            ).astype(jnp.uint8)


@pytest.mark.parametrize("estimator,num_samples", [("nvil", 1), ("vimco", 3),
                                                  ("rws", 3), ("concrete", 1),
                                                  ("concrete", 3), ("rebar", 1),
                                                  ("relax", 2)])
def test_steps_change_params_and_never_retrace(estimator, num_samples):
  chex.clear_trace_counter()  # counters are per function body, across tests
  config = _config(estimator=estimator, num_samples=num_samples)
  mesh = parallel.make_mesh(1)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  before = jax.tree.map(np.asarray, state.params)
  update = train.make_update_step(config, mesh, max_traces=1)
  images = input_pipeline.place_train_streams(np.asarray(_train_images(config)),
                                     config.batch_size, mesh)
  for _ in range(3):
    state, metrics = update(state, images, jax.random.key(1))
  assert int(state.step) == 3 and int(state.nonfinite_step) == -1
  for key in ("loss", "elbo", "log_likelihood", "kl", "grad_norm",
              "baseline_grad_norm", "mean_count"):
    assert np.isfinite(metrics[key]), key
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                         jax.device_get(state.params))
  assert all(jax.tree.leaves(changed["rnn"])), "every LSTM weight should move"


def test_bad_config_values_raise_clear_errors():
  with pytest.raises(ConfigError, match="estimator"):
    run_config.validate_config(_config(estimator="reinforce"))
  with pytest.raises(ConfigError, match="num_samples"):
    run_config.validate_config(_config(estimator="vimco", num_samples=1))
  with pytest.raises(ConfigError, match="concrete_temperature_end"):
    run_config.validate_config(_config(estimator="concrete",
                                       concrete_temperature_end=0.0))
  with pytest.raises(ConfigError, match="learning_rate"):
    run_config.validate_config(_config(learning_rate=-1.0))
  config = _config()
  config.model.render_method = "fft"
  with pytest.raises(ConfigError, match="render_method"):
    run_config.validate_config(config)
  with pytest.raises(ConfigError, match="divide"):
    parallel.check_batch_divides(6, parallel.make_mesh(4))
  with pytest.raises(ConfigError, match="num_devices"):
    parallel.make_mesh(1000)


def _final_params(workdir, config):
  mngr = checkpoints.manager(workdir)
  target = train.create_train_state(config, jax.random.key(0))
  step, state = checkpoints.restore_latest(mngr, target)
  return step, state


def _adam_steps(config, num_updates):
  """Updates of `make_optimizer` under a constant gradient, whose Adam
  direction is 1 per coordinate (to float32 bias correction): what is left is the learning rate."""
  params = {"rnn": jnp.zeros(2), "baseline": jnp.zeros(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  optimizer = train.make_optimizer(config)
  opt_state = optimizer.init(params)
  rates = []
  for _ in range(num_updates):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    rates.append({k: -float(v[0]) for k, v in updates.items()})
  return rates


def test_learning_rates_per_group_and_cosine_schedule():
  constant = _adam_steps(_config(learning_rate=1e-3,
                                 baseline_learning_rate=1e-2), 3)
  for rate in constant:
    np.testing.assert_allclose(rate["rnn"], 1e-3, rtol=1e-4)
    np.testing.assert_allclose(rate["baseline"], 1e-2, rtol=1e-4)
  config = _config(learning_rate=1e-3, baseline_learning_rate=1e-2,
                   num_steps=10, lr_schedule="cosine", lr_final_fraction=0.1)
  rates = _adam_steps(config, 11)
  for step in (0, 5, 10):
    factor = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / 10))
    np.testing.assert_allclose(rates[step]["rnn"], 1e-3 * factor, rtol=1e-4)
    np.testing.assert_allclose(rates[step]["baseline"], 1e-2 * factor,
                               rtol=1e-4)
  with pytest.raises(ConfigError, match="lr_schedule"):
    run_config.validate_config(_config(lr_schedule="linear"))
  with pytest.raises(ConfigError, match="lr_decay_steps"):
    run_config.validate_config(_config(lr_decay_steps=-1))
  with pytest.raises(ConfigError, match="lr_final_fraction"):
    run_config.validate_config(_config(lr_final_fraction=2.0))


# Concrete with an annealed temperature: the relaxation's schedule must resume
# at the step where it stopped too.
_CONCRETE = dict(estimator="concrete", num_samples=2, concrete_temperature=1.0,
                 concrete_temperature_end=0.1, concrete_anneal_steps=4)


@pytest.mark.parametrize("estimator", [{}, _CONCRETE, dict(estimator="relax")],
                         ids=["nvil", "concrete", "relax"])
def test_resume_equals_uninterrupted(tmp_path, estimator):
  # The cosine schedule keeps a step count in the optimiser state: resuming
  # must restore it too.
  schedule = dict(lr_schedule="cosine", lr_decay_steps=4, **estimator)
  config = _config(num_steps=4, checkpoint_every=2, **schedule)
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  train.train_and_evaluate(_config(num_steps=2, checkpoint_every=2,
                                   **schedule),
                           str(tmp_path / "resumed"))
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, a = _final_params(str(tmp_path / "straight"), config)
  step_b, b = _final_params(str(tmp_path / "resumed"), config)
  assert step_a == step_b == 4
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)
  # The run wrote what a user reads.
  workdir = tmp_path / "straight"
  for name in ("config.json", "metrics.jsonl", "final_metrics.json",
               "reconstructions.png"):
    assert (workdir / name).exists(), name
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [2, 4]
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert 0.0 <= final["count_accuracy"] <= 1.0
  assert final["iwae"] >= final["elbo"] - 1.0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path,
                                                              monkeypatch):
  """A NaN from step 2 on stops the run; the step-2 checkpoint stays good."""
  real_rho = run_config.rho_at
  monkeypatch.setattr(run_config, "rho_at", lambda config, step: jnp.where(
      step >= 2, jnp.nan, real_rho(config, step)))
  config = _config(num_steps=6, checkpoint_every=2, log_every=2)
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError, match="step 2"):
    train.train_and_evaluate(config, workdir)
  step, state = _final_params(workdir, config)
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_a_corrupt_checkpoint_is_set_aside_or_a_clear_error(tmp_path, capfd):
  config = _config(num_steps=2, checkpoint_every=2)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  for root, _, files in os.walk(workdir / "checkpoints" / "2"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  target = train.create_train_state(config, jax.random.key(0))
  with pytest.raises(checkpoints.CheckpointError, match="is damaged"):
    checkpoints.restore_latest(checkpoints.manager(str(workdir)), target,
                               set_aside_damaged=False)
  assert os.path.isdir(workdir / "checkpoints" / "2")  # left where it was
  # By default it is moved aside (kept) and, none being left, nothing is
  # restored: training would start again.
  assert checkpoints.restore_latest(checkpoints.manager(str(workdir)),
                                    target) == (None, None)
  assert "checkpoints/2 is damaged" in capfd.readouterr().err
  assert len(os.listdir(workdir / "damaged_checkpoints")) == 1


@pytest.mark.parametrize("estimator,num_samples", [("nvil", 1), ("rebar", 1),
                                                  ("rws", 2)])
def test_background_warm_ups_cross_their_end_without_retracing(
    estimator, num_samples):
  """AIR with a background and both warm-ups (flat background, presence
  floor): steps before and after the warm-ups' end run under one trace, and
  every background weight moves."""
  chex.clear_trace_counter()
  config = _config(estimator=estimator, num_samples=num_samples,
                   background_warmup_steps=2, presence_warmup_steps=2)
  config.model.background = "mlp"
  config.model.background_resolution = 4
  mesh = parallel.make_mesh(1)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  before = jax.tree.map(np.asarray, state.params["background_net"])
  update = train.make_update_step(config, mesh, max_traces=1)
  images = input_pipeline.place_train_streams(np.asarray(_train_images(config)),
                                              config.batch_size, mesh)
  for _ in range(4):
    state, metrics = update(state, images, jax.random.key(1))
  assert int(state.step) == 4 and np.isfinite(metrics["loss"])
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                       jax.device_get(state.params["background_net"]))
  assert all(jax.tree.leaves(moved))
