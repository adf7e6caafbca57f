"""2 processes on loopback (`jax.distributed`, 2 fake CPU devices each) train
as 1 process does, each reading only its half of the data (issue 4).

Kept apart from test_parallel.py so that pytest-xdist (`--dist loadfile`)
runs these slow tests beside it rather than after it.
"""

import os
import socket
import subprocess
import sys

import chex
import jax
import pytest

from apdr_jax import checkpoints
from apdr_jax import train
from configs import tiny
from configs import tiny_apdr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  # Two processes side by side must not share a compilation cache (conftest).
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "launch.train", f"--config=configs/{name}.py",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}",
       *(f"--config.{k}={v}" for k, v in overrides.items())],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=400)[0] for p in procs]
  finally:
    for p in procs:  # one that died leaves the other waiting at a barrier
      if p.poll() is None:
        p.kill()
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
