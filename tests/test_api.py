"""`apdr_jax.load(workdir)` and the `Model` it returns, on tiny trained runs."""

import os

import jax
import numpy as np
import pytest

import apdr_jax
from apdr_jax import evaluation
from apdr_jax import input_pipeline
from apdr_jax import sequence_evaluation
from apdr_jax.errors import CheckpointError
from apdr_jax.errors import ConfigError
from apdr_jax.errors import DataError


def _held_out(model, num):
  _, test = input_pipeline.load_data(model.config)
  return test["images"][:num], test


def _listing(path):
  return sorted((root, tuple(sorted(files))) for root, _, files in
                os.walk(path))


def test_air_model_decomposes_like_the_pure_function(tiny_air_run):
  model = apdr_jax.load(tiny_air_run[0])
  assert not model.is_sequential and model.step == model.config.num_steps
  images, _ = _held_out(model, 6)
  result = model.decompose(images)  # uint8, as a user's .npy would be
  expected = evaluation.decompose(model.model_config, model.params,
                                  images.astype(np.float32) / 255.0)
  assert set(result) >= {"counts", "presence", "boxes", "reconstructions"}
  for key, value in expected.items():
    np.testing.assert_array_equal(result[key], value, err_msg=key)
  n = model.model_config.num_slots
  assert result["boxes"].shape == (6, n, 4)
  one = model.decompose(images[0])  # a single [H, W] image
  np.testing.assert_array_equal(one["counts"], result["counts"][:1])


def test_air_log_marginal_averages_to_the_evaluation_bound(tiny_air_run):
  model = apdr_jax.load(tiny_air_run[0])
  images, _ = _held_out(model, 8)
  floats = images.astype(np.float32) / 255.0
  per_image = model.log_marginal(images, num_samples=3, seed=5, batch_size=4)
  assert per_image.shape == (8,) and np.all(np.isfinite(per_image))
  bounds = evaluation.bounds(model.model_config, model.params, floats,
                             jax.random.key(5), model.rho, num_samples=3,
                             batch_size=4)
  np.testing.assert_allclose(per_image.mean(), bounds["iwae"], rtol=1e-5)


def test_air_samples_follow_the_prior_order(tiny_air_run):
  model = apdr_jax.load(tiny_air_run[0])
  samples = model.sample(64, seed=1, rho=0.5)
  size = model.canvas_size
  assert samples["images"].shape == (64, size, size)
  presence = samples["presence"]
  assert np.all(np.diff(presence, axis=1) <= 0)  # a prefix of ones
  assert 0 < presence.sum() < presence.size
  with pytest.raises(ConfigError, match="APDR"):
    model.predict(np.zeros((1, 2, size, size), np.float32), 2)


def test_apdr_model_decomposes_predicts_and_samples(tiny_apdr_run):
  model = apdr_jax.load(tiny_apdr_run[0])
  assert model.is_sequential
  sequences, _ = _held_out(model, 4)
  frames, n = sequences.shape[1], model.model_config.num_slots
  result = model.decompose(sequences)
  expected = sequence_evaluation.decompose(
      model.model_config, model.params, sequences.astype(np.float32) / 255.0,
      rho=model.rho)
  for key, value in expected.items():
    np.testing.assert_array_equal(result[key], value, err_msg=key)
  assert result["ids"].shape == (4, frames, n)
  log_p = model.log_marginal(sequences, num_samples=2)
  assert log_p.shape == (4,) and np.all(np.isfinite(log_p))
  predicted = model.predict(sequences[:, :2], num_frames=3)
  assert predicted["images"].shape == (4, 3) + sequences.shape[2:]
  assert predicted["ids"].shape == (4, 3, n)
  sampled = model.sample(3, num_frames=5)
  assert sampled["images"].shape == (3, 5) + sequences.shape[2:]
  with pytest.raises(DataError, match="shape"):
    model.decompose(sequences[0])  # one sequence without its batch axis


def test_load_refuses_missing_and_foreign_workdirs(tmp_path):
  with pytest.raises(CheckpointError, match="not a directory"):
    apdr_jax.load(str(tmp_path / "missing"))
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("not a run")
  with pytest.raises(CheckpointError, match="config.json not found"):
    apdr_jax.load(str(foreign))
  (foreign / "config.json").write_text('{"something": "else"}')
  before = _listing(foreign)
  with pytest.raises(CheckpointError, match="not an apdr_jax run config"):
    apdr_jax.load(str(foreign))
  assert _listing(foreign) == before  # nothing written


def test_load_of_a_run_without_checkpoints_writes_nothing(tiny_air_run,
                                                          tmp_path):
  import shutil
  copy = tmp_path / "no_checkpoints"
  copy.mkdir()
  shutil.copy(os.path.join(tiny_air_run[0], "config.json"), copy)
  before = _listing(copy)
  with pytest.raises(CheckpointError, match="no checkpoint"):
    apdr_jax.load(str(copy))
  assert _listing(copy) == before


@pytest.mark.parametrize("call", [
    lambda m, x: m.log_marginal(x, num_samples=0),
    lambda m, x: m.log_marginal(x, num_samples=2.5),
    lambda m, x: m.log_marginal(x, batch_size=0),
    lambda m, x: m.sample(0),
    lambda m, x: m.sample("3"),
    lambda m, x: m.sample(2, rho=2.0),
    lambda m, x: m.sample(2, rho=float("nan")),
    lambda m, x: m.sample(2, seed=-1),
])
def test_bad_arguments_are_config_errors(tiny_air_run, call):
  model = apdr_jax.load(tiny_air_run[0])
  images, _ = _held_out(model, 2)
  with pytest.raises(ConfigError):
    call(model, images)
