"""The notebooks run through a real Jupyter kernel against tiny trained workdirs.

Each notebook is executed in memory with nbclient, as Jupyter runs it: in a
`python3` kernel of this environment whose working directory is `notebooks/`
(so the notebook itself must find the checkout), with `APDR_WORKDIR` and the
test session's scene cache passed through the kernel's environment. The
executed notebook is never written back.
"""

import base64
import io
import os

import numpy as np
import pytest

from apdr_jax import air

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


def _execute(name: str, workdir: str, monkeypatch):
  """Runs `notebooks/<name>` in a fresh kernel against `workdir`.

  Returns:
    the executed notebook (an `nbformat.NotebookNode`); a cell that raises
    fails the test with the cell and its traceback.
  """
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  pytest.importorskip("ipykernel")
  # The kernel inherits this process's environment: the workdir, the scene
  # cache set by `_scene_cache`, XLA_FLAGS and the compilation cache of
  # conftest, and, as for the test process, cheap compilation.
  monkeypatch.setenv("APDR_WORKDIR", workdir)
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3", record_timing=False,
      resources={"metadata": {"path": NOTEBOOKS}}).execute()
  return notebook


def _outputs(notebook) -> dict:
  """Per code cell id: its printed text and its decoded PNG pictures."""
  cells = {}
  for cell in notebook.cells:
    if cell.cell_type != "code":
      continue
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.id
    text = "".join(o.text for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")
    pictures = [base64.b64decode(o.data["image/png"]) for o in cell.outputs
                if "image/png" in o.get("data", {})]
    cells[cell.id] = (text, pictures)
  return cells


def _picture_size(png: bytes) -> tuple:
  from PIL import Image
  with Image.open(io.BytesIO(png)) as picture:
    return picture.size


def test_air_notebook_runs_in_a_kernel(tiny_air_run, monkeypatch):
  path, _ = tiny_air_run
  cells = _outputs(_execute("explore_air.ipynb", path, monkeypatch))
  setup, _ = cells["setup"]
  # configs/tiny: 4 steps, a 32x32 canvas, 2 slots.
  assert "Model(AIR, step=4, canvas=32, slots=2)" in setup
  assert "inferred counts:" in cells["held-out"][0]
  assert "count accuracy over 64 held-out scenes" in cells["scores"][0]
  assert "DataError:" in cells["mine-error"][0]
  assert "log-weight log p(x, z) - log q(z | x)" in cells["pure"][0]
  for name in ("held-out", "mine", "prior", "pure"):
    assert len(cells[name][1]) == 1, name
  # Eight held-out scenes (at most three per count), input and
  # reconstruction rows, at zoom 2: tiles of 32 * 2 + 2 pixels.
  width, height = _picture_size(cells["held-out"][1][0])
  assert height == 2 * 66 and width % 66 == 0 and 1 <= width // 66 <= 8


def test_apdr_notebook_runs_in_a_kernel(tiny_apdr_run, monkeypatch):
  path, _ = tiny_apdr_run
  cells = _outputs(_execute("explore_apdr.ipynb", path, monkeypatch))
  # configs/tiny_apdr: 3 frames, 2 slots, 8 held-out sequences.
  assert "Model(APDR, step=4, canvas=32, slots=2)" in cells["setup"][0]
  assert "ids per frame,   sequence 0:" in cells["held-out"][0]
  tracking = cells["tracking"][0]
  assert "the first 8 held-out sequences" in tracking
  assert "q's modes" in tracking and "best of 8, both directions" in tracking
  assert tracking.count("tracking_consistency") == 2
  assert "observed 1 frames, predicted 2" in cells["predict"][0]
  pure = cells["pure"][0]
  assert "frame 2: propagated" in pure
  assert "sequence log-weight over 3 frames" in pure
  for name in ("held-out", "mine", "prior", "predict"):
    assert len(cells[name][1]) == 1, name
  # Two sequences, each inputs over reconstructions, 3 frames at zoom 2,
  # with a 2-pixel gap between pictures.
  assert _picture_size(cells["held-out"][1][0]) == (3 * 66 - 2, 4 * 66 - 2)


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
