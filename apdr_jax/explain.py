"""APDR's readings frame by frame, with each decision's terms: what to read
when counts or tracks go wrong (`launch.evaluate --explain=N`)."""

import jax
import jax.numpy as jnp
import numpy as np

from apdr_jax import sequence_evaluation
from apdr_jax import tracking


def explain_frames(model_config, params, sequences: np.ndarray,
                   truth: dict | None = None) -> list:
  """APDR's posterior modes frame by frame, with each decision's terms: what
  to read when counts or tracks go wrong (a lagging box, a duplicate found
  in the leftover ink, a forgotten object).

  Args:
    model_config: `APDRConfig`.
    params: trained parameters.
    sequences: `[num, T, H, W]` float32 in [0, 1] (a few: one batch).
    truth: optional held-out arrays (`boxes [num, T, M, 4]`, `presence`).

  Returns:
    one list per sequence of one dict per frame: `propagated` (k_t),
    `discovered` (n_t), `objects` (id, centre `[x, y]` in pixels, scale),
    `log_likelihood`, `propagation_terms` and `discovery_terms` (per slot,
    `log p - log q` of its decision and latents), and `truth_centres`.
  """
  f = jax.device_get(sequence_evaluation.apdr_modes(model_config, params,
                                 jnp.asarray(sequences), False))
  centres = tracking.box_centres(sequence_evaluation.pixel_boxes(model_config, f.z_where)).reshape(
      f.z_where.shape[:-1] + (2,))
  rounded = lambda values: [round(float(v), 2) for v in values]
  n = model_config.num_slots
  table = []
  for i in range(sequences.shape[0]):
    frames = []
    for t in range(sequences.shape[1]):
      objects = [{"id": int(f.ids[i, t, k]),
                  "scale": round(float(f.z_where[i, t, k, 0]), 3),
                  "centre": rounded(centres[i, t, k])}
                 for k in range(n) if f.presence[i, t, k] > 0.5]
      frame = dict(propagated=int(f.num_propagated[i, t]),
                   discovered=int(f.num_discovered[i, t]), objects=objects,
                   log_likelihood=round(float(f.log_likelihood[i, t]), 2),
                   propagation_terms=rounded(f.terms[i, t, :n]),
                   discovery_terms=rounded(f.terms[i, t, n:2 * n]))
      if truth is not None:
        present = np.asarray(truth["presence"][i, t]) > 0
        frame["truth_centres"] = [rounded(c) for c in tracking.box_centres(
            np.asarray(truth["boxes"][i, t])[present])]
      frames.append(frame)
    table.append(frames)
  return table


def format_explained(table: list) -> str:
  """`explain_frames` as one line per frame."""
  lines = []
  for i, frames in enumerate(table):
    lines.append(f"sequence {i}")
    for t, f in enumerate(frames):
      objects = " ".join(f"#{o['id']}@({o['centre'][0]:.1f},{o['centre'][1]:.1f})"
                         for o in f["objects"])
      truth = " ".join(f"({x:.1f},{y:.1f})" for x, y in f.get("truth_centres", []))
      lines.append(f"  t={t} kept {f['propagated']} found {f['discovered']} | "
                   f"{objects or '-'} | truth {truth or '-'} | "
                   f"log p(x|z) {f['log_likelihood']:.0f} | prop "
                   f"{f['propagation_terms']} disc {f['discovery_terms']}")
  return "\n".join(lines)
