"""Faults injected into real training runs: SIGKILL at chosen and random
moments, damaged checkpoints, a second run on a busy workdir, a changed
config. Killed runs are subprocesses of `launch.train`, restarted until they
finish, and must end *equal* (array equality) to an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from apdr_jax import checkpoints
from apdr_jax import train
from apdr_jax import workdir as workdir_lib
from apdr_jax.errors import ConfigError
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What differs between two equal runs: wall-clock times.
_TIMINGS = ("images_per_second", "compile_seconds", "train_seconds")


def _command(config_name, workdir, *overrides):
  return [sys.executable, "-m", "launch.train",
          f"--config=configs/{config_name}.py", f"--workdir={workdir}",
          *overrides]


# Runs killed here must not share the session's compilation cache: JAX
# writes a cache entry in place, and a kill mid-write would leave a torn
# entry for every later test to read.
_XLA_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                          f"apdr_jax_fault_tests_xla_cache_{os.getpid()}")


def _env(kill_at=None):
  env = dict(os.environ, XLA_FLAGS="", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
             JAX_COMPILATION_CACHE_DIR=_XLA_CACHE)
  env.pop("APDR_JAX_KILL_AT", None)
  if kill_at:
    env["APDR_JAX_KILL_AT"] = kill_at
  return env


def _train(command, kill_at=None, kill_after_s=None):
  """Runs `launch.train`; returns its exit code (-9 when killed)."""
  process = subprocess.Popen(command, cwd=ROOT, env=_env(kill_at),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  try:
    out, err = process.communicate(timeout=kill_after_s)
  except subprocess.TimeoutExpired:
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate()
  if process.returncode not in (0, -signal.SIGKILL):
    raise AssertionError(f"launch.train failed ({process.returncode}):\n"
                         f"{out[-2000:]}\n{err[-3000:]}")
  return process.returncode


def _final_state(workdir):
  config = checkpoints.load_config(workdir)
  target = train.create_train_state(config, jax.random.key(0))
  step, state = checkpoints.restore_latest(
      checkpoints.manager(workdir, read_only=True), target)
  return step, jax.device_get(state)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in records]


def _final_metrics(workdir):
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    return {k: v for k, v in json.load(f).items() if k not in _TIMINGS}


def _assert_same_run(straight, killed):
  step_a, a = _final_state(straight)
  step_b, b = _final_state(killed)
  assert step_a == step_b
  jax.tree.map(np.testing.assert_array_equal, a, b)
  records = _metrics(killed)
  steps = [r["step"] for r in records]
  assert steps == sorted(set(steps)), steps  # each step once, in order
  assert records == _metrics(straight)
  assert _final_metrics(killed) == _final_metrics(straight)


_CASES = {
    # name: (config, overrides, kills); a kill is "point:step" or seconds.
    "air_nvil": ("tiny", ["--config.num_steps=8"],
                 ["checkpoint_write:4", "metrics_write:6", "after_update:7",
                  "random"]),
    "air_vimco": ("tiny", ["--config.num_steps=6", "--config.estimator=vimco",
                           "--config.num_samples=2"],
                  ["after_update:3", "checkpoint_write:6"]),
    # Curriculum 2 frames, then 3 from step 2; grafted from a tiny AIR run.
    # Killed before its first checkpoint (so the restart grafts again), in
    # the stage boundary's checkpoint write, and after a metrics line.
    "apdr_grafted": ("tiny_apdr", ["--config.num_steps=6"],
                     ["after_update:1", "checkpoint_write:2",
                      "metrics_write:4"]),
}


@pytest.fixture(scope="module")
def air_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("air_for_graft")
  assert _train(_command("tiny", path, "--config.num_steps=2")) == 0
  return str(path)


@pytest.mark.parametrize("case", sorted(_CASES))
def test_killed_runs_resume_exactly(case, tmp_path, air_workdir):
  config_name, overrides, kills = _CASES[case]
  if case == "apdr_grafted":
    overrides = overrides + [f"--config.init_air_from={air_workdir}"]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert _train(_command(config_name, straight, *overrides)) == 0
  rng = random.Random(case)
  for kill in kills:
    if kill == "random":  # anywhere: start-up, a step, a write
      code = _train(_command(config_name, killed, *overrides),
                    kill_after_s=rng.uniform(1.0, 8.0))
    else:
      code = _train(_command(config_name, killed, *overrides), kill_at=kill)
      assert code == -signal.SIGKILL, kill
  for _ in range(3):  # as many restarts as it takes
    if _train(_command(config_name, killed, *overrides)) == 0:
      break
  _assert_same_run(str(straight), str(killed))


def _tiny(**overrides):
  config = tiny.get_config()
  config.num_devices = 1
  config.update(overrides)
  return config


def _damage(step_dir, how):
  data = os.path.join(step_dir, "default", "d")
  files = sorted(os.path.join(data, f) for f in os.listdir(data))
  if how == "truncated":
    for path in files:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  elif how == "garbage":
    for path in files:
      with open(path, "wb") as f:
        f.write(os.urandom(max(16, os.path.getsize(path))))
  elif how == "half_written":  # its array files never arrived
    for path in files:
      os.remove(path)
  elif how == "no_metadata":
    os.remove(os.path.join(step_dir, "default", "_METADATA"))


@pytest.mark.parametrize("how", ["truncated", "garbage", "half_written",
                                 "no_metadata"])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_goes_on(
    how, tmp_path, capfd):
  straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
  train.train_and_evaluate(_tiny(num_steps=6), straight)
  train.train_and_evaluate(_tiny(num_steps=4), damaged)  # steps 2 and 4
  _damage(os.path.join(damaged, "checkpoints", "4"), how)
  capfd.readouterr()
  train.train_and_evaluate(_tiny(num_steps=6), damaged)
  err = capfd.readouterr().err
  warnings = [line for line in err.splitlines() if "is damaged" in line]
  assert len(warnings) == 1, err
  assert "checkpoints/4" in warnings[0] and "damaged_checkpoints" in warnings[0]
  aside = os.listdir(os.path.join(damaged, "damaged_checkpoints"))
  assert len(aside) == 1 and aside[0].startswith("4-")  # renamed, not deleted
  # Resumed from step 2: the same as a run never interrupted.
  _, a = _final_state(straight)
  _, b = _final_state(damaged)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  steps = [r["step"] for r in _metrics(damaged)]
  assert steps == sorted(set(steps))


def test_evaluate_falls_back_and_says_which_step(tmp_path, capfd):
  from launch import evaluate
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(num_steps=4), workdir)
  _damage(os.path.join(workdir, "checkpoints", "4"), "garbage")
  capfd.readouterr()
  result = evaluate.run(workdir, None, str(tmp_path / "eval.json"), 2, 16)
  assert result["step"] == 2
  assert "checkpoints/4 is damaged" in capfd.readouterr().err


def test_a_checkpoint_of_other_shapes_is_an_error_not_damage(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(num_steps=2), workdir)
  other = _tiny(num_steps=2)
  other.model.lstm_size = 8
  target = train.create_train_state(other, jax.random.key(0))
  with pytest.raises(Exception, match="does not match this config"):
    checkpoints.restore_latest(checkpoints.manager(workdir), target)
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_resuming_with_a_changed_model_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(num_steps=2), workdir)
  changed = _tiny(num_steps=4, learning_rate=1e-2)
  changed.model.lstm_size = 8
  with pytest.raises(ConfigError, match="model.lstm_size=16 there, 8 here") as e:
    train.train_and_evaluate(changed, workdir)
  assert "learning_rate" in str(e.value)
  # Safe changes (length, logging, evaluation) resume.
  result = train.train_and_evaluate(
      _tiny(num_steps=4, log_every=1, eval_every=4, final_iwae_samples=2),
      workdir)
  assert result["steps"] == 4


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / "busy"
  first = subprocess.Popen(
      _command("tiny", workdir, "--config.num_steps=100000",
               "--config.checkpoint_every=100000"),
      cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    lock = workdir / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text() == str(first.pid)):
      assert time.time() < deadline and first.poll() is None
      time.sleep(0.2)
    second = subprocess.run(_command("tiny", workdir), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: {workdir} is in use by another training run (pid "
        f"{first.pid}); wait for it to finish, stop it, or use another "
        "--workdir"]
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  with workdir_lib.lock(str(workdir)):  # a killed run leaves no stale lock
    pass


def _full_disk(limit_bytes=16_384):
  """A child whose files may not grow past `limit_bytes` (RLIMIT_FSIZE): its
  writes fail as on a full disk (EFBIG instead of ENOSPC)."""
  import resource

  def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
  return limit


def test_a_full_disk_while_checkpointing_keeps_the_last_good_one(tmp_path):
  straight, full = tmp_path / "straight", tmp_path / "full"
  assert _train(_command("tiny", straight, "--config.num_steps=4")) == 0
  assert _train(_command("tiny", full, "--config.num_steps=2")) == 0
  result = subprocess.run(_command("tiny", full, "--config.num_steps=4"),
                          cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=_full_disk())
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: could not write checkpoint 4 under {full}/checkpoints (File "
      "too large); the checkpoints written before are kept"]
  assert _final_state(str(full))[0] == 2  # the last good one, readable
  # With room again, the run goes on from it to the same end.
  assert _train(_command("tiny", full, "--config.num_steps=4")) == 0
  assert not [f for f in os.listdir(full / "checkpoints") if "tmp" in f]
  _assert_same_run(str(straight), str(full))


@pytest.mark.skipif(not os.environ.get("APDR_FAULT_SOAK"),
                    reason="a long soak: APDR_FAULT_SOAK=<kills> to run it")
def test_soak_random_kills(tmp_path):
  """`APDR_FAULT_SOAK=25 pytest -s tests/test_faults.py -k soak`: a 60k-step
  AIR run (about 100 s here) SIGKILLed that many times, each 2-10 s after
  its start (start-up, steps, checkpoint and metrics writes, evaluation),
  restarted after each, then run to the end."""
  kills = int(os.environ["APDR_FAULT_SOAK"])
  overrides = ["--config.num_steps=60000", "--config.checkpoint_every=500",
               "--config.log_every=100", "--config.eval_every=20000"]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert _train(_command("tiny", straight, *overrides)) == 0
  rng = random.Random(0)
  codes = [_train(_command("tiny", killed, *overrides),
                  kill_after_s=rng.uniform(2.0, 10.0)) for _ in range(kills)]
  while _train(_command("tiny", killed, *overrides)) != 0:
    pass
  steps = [r["step"] for r in _metrics(str(killed))]
  print(f"\nsoak: {codes.count(-signal.SIGKILL)} of {kills} runs killed, "
        f"{codes.count(0)} finished first; {len(steps)} logged steps")
  _assert_same_run(str(straight), str(killed))
