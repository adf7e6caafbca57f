"""Data parallelism: 8 fake devices equal 1, checkpoints move between device
counts, and 2 processes on loopback equal 1 process (issue 4)."""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from apdr_jax import checkpoints
from apdr_jax import parallel
from apdr_jax import train
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = tiny.get_config()
  config.update(overrides)
  return config


def _train_steps(config, num_devices, steps=3):
  mesh = parallel.make_mesh(num_devices)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  size = config.data.canvas_size
  scenes = np.random.default_rng(0).integers(0, 256, (64, size, size),
                                             dtype=np.uint8)
  streams = train.place_train_streams(scenes, config.batch_size, mesh)
  update = train.make_update_step(config, mesh)
  for _ in range(steps):
    state, _ = update(state, streams, jax.random.key(1))
  return state


@pytest.mark.parametrize("estimator,num_samples", [("nvil", 1), ("vimco", 3)])
def test_eight_devices_equal_one(estimator, num_samples):
  assert jax.device_count() >= 8, "conftest should force 8 CPU devices"
  config = _config(estimator=estimator, num_samples=num_samples)
  one = _train_steps(config, 1)
  eight = _train_steps(config, 8)
  assert len(eight.params["rnn"]["image"]["kernel"].sharding.device_set) == 8
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


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_loopback_equal_one_process(tmp_path):
  overrides = ["--config.num_steps=3", "--config.checkpoint_every=3",
               "--config.log_every=3", "--config.eval_every=3"]
  workdir = tmp_path / "multi"
  port = _free_port()
  env = dict(os.environ, APDR_JAX_CACHE=os.environ["APDR_JAX_CACHE"],
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "launch.train", "--config=configs/tiny.py",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", *overrides],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert (workdir / "metrics.jsonl").exists()
  config = _config(num_steps=3, checkpoint_every=3, log_every=3, eval_every=3,
                   num_devices=1)
  train.train_and_evaluate(config, str(tmp_path / "single"))
  target = train.create_train_state(config, jax.random.key(0))
  _, multi = checkpoints.restore_latest(checkpoints.manager(str(workdir)), target)
  _, single = checkpoints.restore_latest(
      checkpoints.manager(str(tmp_path / "single")), target)
  chex.assert_trees_all_close(jax.device_get(multi.params),
                              jax.device_get(single.params),
                              rtol=2e-4, atol=2e-5)
