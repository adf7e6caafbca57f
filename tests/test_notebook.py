"""The notebook's code cells run, in order, against a tiny trained workdir."""

import json
import os

import numpy as np

from apdr_jax import air
from apdr_jax import train
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_notebook(name, workdir, monkeypatch) -> dict:
  """Runs a notebook's code cells in order against `workdir`; its namespace."""
  monkeypatch.setenv("APDR_WORKDIR", workdir)
  with open(os.path.join(ROOT, "notebooks", name)) as f:
    cells = json.load(f)["cells"]
  namespace = {}
  for cell in cells:
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)
  return namespace


def test_notebook_code_cells_run(tmp_path, monkeypatch):
  config = tiny.get_config()
  config.num_devices = 1
  train.train_and_evaluate(config, str(tmp_path))
  namespace = _run_notebook("explore_air.ipynb", str(tmp_path), monkeypatch)
  assert namespace["result"]["counts"].shape == (16,)
  assert namespace["step"] == config.num_steps


def test_apdr_notebook_code_cells_run(tiny_apdr_run, monkeypatch):
  path, _ = tiny_apdr_run
  namespace = _run_notebook("explore_apdr.ipynb", path, monkeypatch)
  # tiny_apdr: 8 held-out sequences of 3 frames, 2 slots.
  assert namespace["result"]["ids"].shape == (8, 3, 2)
  assert "tracking_consistency" in namespace["scores"]


def test_prior_counts_follow_the_truncated_geometric():
  import jax
  model = air.AIRConfig(canvas_size=16, num_slots=3, glimpse_size=4,
                        z_what_dim=2, lstm_size=4, mlp_size=4)
  params = air.init_params(model, jax.random.key(0))
  rho, num = 0.4, 40_000
  presence, _, _, canvas = air.sample_prior(model, params, jax.random.key(1),
                                            num, rho)
  counts = np.asarray(presence.sum(-1)).astype(int)
  expected = [rho ** n * (1 - rho) for n in range(3)] + [rho ** 3]
  freq = np.bincount(counts, minlength=4) / num
  stderr = np.sqrt(np.array(expected) * (1 - np.array(expected)) / num)
  np.testing.assert_array_less(np.abs(freq - expected), 4 * stderr)
  assert np.all(np.diff(np.asarray(presence), axis=1) <= 0)
  empty = counts == 0
  np.testing.assert_array_equal(np.asarray(canvas)[empty], 0.0)
