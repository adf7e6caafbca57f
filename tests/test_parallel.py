"""Data parallelism: 8 fake devices equal 1, checkpoints move between device
counts (issue 4); several processes are in test_multiprocess.py."""

import chex
import jax
import numpy as np
import pytest

from apdr_jax import checkpoints
from apdr_jax import input_pipeline
from apdr_jax import parallel
from apdr_jax import run_config
from apdr_jax import train
from configs import tiny
from configs import tiny_apdr


def _config(**overrides):
  config = tiny.get_config()
  config.update(overrides)
  return config


def _train_steps(config, num_devices, steps=3):
  mesh = parallel.make_mesh(num_devices)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  size = config.data.canvas_size
  frames = (config.data.num_frames,) if run_config.is_sequential(config) else ()
  scenes = np.random.default_rng(0).integers(0, 256, (64,) + frames +
                                             (size, size), dtype=np.uint8)
  streams = input_pipeline.place_train_streams(scenes, config.batch_size, mesh)
  update = train.make_update_step(config, mesh)
  for _ in range(steps):
    state, _ = update(state, streams, jax.random.key(1))
  return state


@pytest.mark.parametrize("estimator,num_samples", [("nvil", 1), ("vimco", 3),
                                                  ("rws", 3), ("concrete", 2),
                                                  ("relax", 2)])
def test_eight_devices_equal_one(estimator, num_samples):
  assert jax.device_count() >= 8, "conftest should force 8 CPU devices"
  config = _config(estimator=estimator, num_samples=num_samples)
  one = _train_steps(config, 1)
  eight = _train_steps(config, 8)
  assert len(eight.params["rnn"]["image"]["kernel"].sharding.device_set) == 8
  chex.assert_trees_all_close(jax.device_get(one.params),
                              jax.device_get(eight.params),
                              rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("overrides", [
    dict(estimator="vimco"), dict(estimator="rws", objective="fivo")],
    ids=["vimco", "fivo"])
def test_eight_devices_equal_one_apdr(overrides):
  """APDR with its default estimator, VIMCO (NVIL's path is the AIR test's),
  and with FIVO's particle filter (resampling is per sequence)."""
  config = tiny_apdr.get_config()
  config.update(num_samples=2, **overrides)
  one = _train_steps(config, 1)
  eight = _train_steps(config, 8)
  leaf = eight.params["prop_core"]["Dense_0"]["kernel"]
  assert len(leaf.sharding.device_set) == 8
  chex.assert_trees_all_close(jax.device_get(one.params),
                              jax.device_get(eight.params),
                              rtol=2e-4, atol=2e-5)


def test_checkpoints_move_between_device_counts(tmp_path):
  config = _config()
  for write_devices, read_devices in ((8, 1), (1, 8)):
    state = _train_steps(config, write_devices, steps=1)
    mngr = checkpoints.manager(str(tmp_path / f"{write_devices}to{read_devices}"))
    checkpoints.save(mngr, 1, state)
    mesh = parallel.make_mesh(read_devices)
    target = jax.device_put(train.create_train_state(config, jax.random.key(5)),
                            parallel.replicated(mesh))
    step, restored = checkpoints.restore_latest(mngr, target)
    assert step == 1
    leaf = restored.params["rnn"]["image"]["kernel"]
    assert len(leaf.sharding.device_set) == read_devices
    chex.assert_trees_all_close(jax.device_get(restored),
                                jax.device_get(state))
