"""The launchers as a user runs them: evaluate on a tiny workdir, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from apdr_jax import data
from apdr_jax import train
from apdr_jax.errors import DataError
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, env_cache):
  env = dict(os.environ, APDR_JAX_CACHE=env_cache, XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_run")
  config = tiny.get_config()
  config.num_devices = 1
  train.train_and_evaluate(config, str(path))
  return str(path)


def test_evaluate_held_out_and_user_images(workdir, tmp_path):
  from launch import evaluate
  result = evaluate.run(workdir, None, str(tmp_path / "eval.json"), 3, 40)
  for key in ("count_accuracy", "iwae", "elbo", "log_likelihood", "kl"):
    assert np.isfinite(result[key]), key
  assert os.path.exists(tmp_path / "eval.png")
  images = (np.random.default_rng(0).random((5, 32, 32)) * 255).astype(np.uint8)
  np.save(tmp_path / "mine.npy", images)
  result = evaluate.run(workdir, str(tmp_path / "mine.npy"),
                        str(tmp_path / "mine.json"), 3, 40)
  saved = json.loads((tmp_path / "mine.json").read_text())
  assert len(saved["images"]) == 5
  for entry in saved["images"]:
    assert entry["count"] == len(entry["boxes"])
    assert all(len(box) == 4 for box in entry["boxes"])


@pytest.mark.parametrize("array,match", [
    (np.zeros((3, 10, 10), np.float32), "shape"),
    (np.full((2, 32, 32), 3.0, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 32, 32), np.int64), "dtype"),
    (np.full((1, 32, 32), np.nan, np.float32), "NaN"),
])
def test_bad_user_images_are_named(array, match, tmp_path):
  path = tmp_path / "bad.npy"
  np.save(path, array)
  with pytest.raises(DataError, match=match):
    data.load_user_images(str(path), 32)


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load_user_images(str(tmp_path / "nope.npy"), 32)
  (tmp_path / "junk.npy").write_bytes(b"not numpy")
  with pytest.raises(DataError, match="cannot read"):
    data.load_user_images(str(tmp_path / "junk.npy"), 32)


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
  cache = str(tmp_path / "cache")
  result = _run("launch.evaluate", f"--workdir={tmp_path / 'empty'}",
                env_cache=cache)
  assert result.returncode == 2
  assert "not a directory" in result.stderr and "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  (tmp_path / "empty").mkdir()
  result = _run("launch.evaluate", f"--workdir={tmp_path / 'empty'}",
                env_cache=cache)
  assert result.returncode == 2
  assert "config.json" in result.stderr and "Traceback" not in result.stderr
  result = _run("launch.train", "--config=configs/tiny.py",
                f"--workdir={tmp_path / 'w'}", "--config.estimator=bogus",
                env_cache=cache)
  assert result.returncode == 2
  assert "estimator" in result.stderr and "Traceback" not in result.stderr


def test_compare_tabulates_finished_runs(workdir, tmp_path):
  result = _run("launch.compare", f"--workdirs={workdir},{workdir}",
                "--target=0.0", env_cache=str(tmp_path / "cache"))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4 and lines[0].startswith("| workdir | estimator")
  cells = [c.strip() for c in lines[2].strip("|").split("|")]
  final = json.loads(open(os.path.join(workdir, "final_metrics.json")).read())
  assert cells[1:4] == ["nvil", "1", "0"]
  assert cells[4] == f"{100 * final['count_accuracy']:.1f}%"
  assert cells[6] == (f"{100 * final['over_count']:.1f}% / "
                      f"{100 * final['under_count']:.1f}%")
  assert cells[9] == "2"  # the first held-out evaluation reaches 0%
  bad = _run("launch.compare", f"--workdirs={tmp_path / 'nope'}",
             env_cache=str(tmp_path / "cache"))
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def background_workdir(tmp_path_factory):
  """The tiny run on digits over per-image smooth fields, with an MLP
  background component."""
  path = tmp_path_factory.mktemp("tiny_background_run")
  config = tiny.get_config()
  config.num_devices = 1
  config.data.background = "smooth"
  config.data.background_varies = True
  config.model.background = "mlp"
  train.train_and_evaluate(config, str(path))
  return str(path)


def test_background_runs_report_and_draw_the_background(background_workdir,
                                                         tmp_path):
  from PIL import Image
  from launch import evaluate
  final = json.loads(open(os.path.join(background_workdir,
                                       "final_metrics.json")).read())
  for key in ("reconstruction_mse", "background_mse",
              "background_ink_absorbed"):
    assert np.isfinite(final[key]), key
  # Input, inferred background, reconstruction: three rows of 34 px tiles
  # (32 px at zoom 4 plus a border) per 8 scenes.
  picture = Image.open(os.path.join(background_workdir, "reconstructions.png"))
  assert picture.size[1] == 3 * 2 * (32 * 4 + 2)
  images = (np.random.default_rng(0).random((3, 32, 32)) * 255).astype(
      np.uint8)
  np.save(tmp_path / "mine.npy", images)
  result = evaluate.run(background_workdir, str(tmp_path / "mine.npy"),
                        str(tmp_path / "mine.json"), 3, 40)
  assert [len(e["boxes"]) for e in result["images"]] == [
      e["count"] for e in result["images"]]
  assert Image.open(result["picture"]).size[1] == 3 * (32 * 4 + 2)
  import apdr_jax
  decomposed = apdr_jax.load(background_workdir).decompose(images)
  assert decomposed["backgrounds"].shape == (3, 32, 32)
  held_out = evaluate.run(background_workdir, None, str(tmp_path / "e.json"),
                          3, 40)
  assert np.isfinite(held_out["background_mse"])
  table = _run("launch.compare", f"--workdirs={background_workdir}",
               "--table=backgrounds", env_cache=str(tmp_path / "cache"))
  assert table.returncode == 0, table.stderr
  cells = [c.strip() for c in
           table.stdout.strip().splitlines()[2].strip("|").split("|")]
  assert cells[1:3] == ["smooth (0.5, per image)", "mlp, over"]
  assert cells[9] == f"{final['background_mse']:.4f}"
