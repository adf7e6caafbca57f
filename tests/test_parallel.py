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
from configs import tiny_apdr

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
  frames = (config.data.num_frames,) if train.is_sequential(config) else ()
  scenes = np.random.default_rng(0).integers(0, 256, (64,) + frames +
                                             (size, size), dtype=np.uint8)
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


def test_eight_devices_equal_one_apdr():
  """APDR with its default estimator, VIMCO (NVIL's path is the AIR test's)."""
  config = tiny_apdr.get_config()
  config.update(estimator="vimco", num_samples=2)
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


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("config_module", [tiny, tiny_apdr])
def test_two_processes_on_loopback_equal_one_process(tmp_path, config_module):
  name = config_module.__name__.split(".")[-1]
  # Process 0 evaluates at step 2 while process 1 waits (`parallel.barrier`).
  overrides = {"num_steps": 3, "checkpoint_every": 3, "log_every": 1,
               "eval_every": 2, "final_iwae_samples": 2,
               "curriculum_start_frames": 0}
  workdir = tmp_path / "multi"
  port = _free_port()
  env = dict(os.environ, APDR_JAX_CACHE=os.environ["APDR_JAX_CACHE"],
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "launch.train", f"--config=configs/{name}.py",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}",
       *(f"--config.{k}={v}" for k, v in overrides.items())],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  # Each process read only its own half of the training streams (the cache is
  # memory-mapped, so the other half never leaves the disk).
  batch = config_module.get_config().batch_size
  for i, out in enumerate(outputs):
    own = list(range(i * batch // 2, (i + 1) * batch // 2))
    assert f"Process {i} of 2 read training streams {own} of {batch}" in out, \
        out[-3000:]
  assert (workdir / "metrics.jsonl").exists()
  config = config_module.get_config()
  config.update(num_devices=1, **overrides)
  train.train_and_evaluate(config, str(tmp_path / "single"))
  target = train.create_train_state(config, jax.random.key(0))
  _, multi = checkpoints.restore_latest(checkpoints.manager(str(workdir)), target)
  _, single = checkpoints.restore_latest(
      checkpoints.manager(str(tmp_path / "single")), target)
  chex.assert_trees_all_close(jax.device_get(multi.params),
                              jax.device_get(single.params),
                              rtol=2e-4, atol=2e-5)
