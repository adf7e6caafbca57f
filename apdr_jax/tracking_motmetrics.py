"""The tracking scores of `apdr_jax.tracking`, computed by py-motmetrics.

A cross-check of the project's numpy code (tests, and `launch.evaluate`'s
`motmetrics_*` numbers) through the optional `motmetrics` package, with the
same matching criterion, so that the two cannot differ in what may match.
"""

import numpy as np

from apdr_jax import tracking

# The criterion and the input checks are tracking's own, shared on purpose.
# pylint: disable=protected-access


def motmetrics_summary(pred_boxes: np.ndarray, pred_ids: np.ndarray,
                       true_boxes: np.ndarray, true_ids: np.ndarray,
                       iou_threshold: float = 0.5, *, criterion: str = "iou",
                       max_distance: float = 8.0) -> dict:
  """The scores of :func:`tracking.tracking_metrics` computed by py-motmetrics.

  A cross-check of the numpy code. Needs the optional `motmetrics` package.
  Its own `iou_matrix` calls `np.asfarray`, removed in numpy 2, so it gets
  distances `1 - similarity` from `tracking._similarity`, NaN (no pairing) where
  the criterion does not allow the pair.

  Args:
    pred_boxes: `[n, T, P, 4]` predicted boxes.
    pred_ids: `[n, T, P]` int, -1 where absent.
    true_boxes: `[n, T, M, 4]` ground-truth boxes.
    true_ids: `[n, T, M]` int, -1 where absent.
    iou_threshold: smallest IoU of a match, for `criterion="iou"`.
    criterion: `"iou"` or `"centre"`.
    max_distance: largest distance in pixels between the box centres of a
      match, for `criterion="centre"`.

  Returns:
    A dict with `mota`, `motp` (mean similarity, i.e. 1 - motmetrics' motp),
    `idf1`, `id_switches`, `num_matches`, `num_misses`,
    `num_false_positives`.

  Raises:
    ConfigError: on an unknown criterion or `max_distance` <= 0.
  """
  import motmetrics  # Optional: only this cross-check needs it.

  similar = tracking._criterion(criterion, iou_threshold, max_distance)
  pred_boxes, pred_ids, true_boxes, true_ids = tracking._check_inputs(
      pred_boxes, pred_ids, true_boxes, true_ids)
  # One accumulator for all sequences: offsetting each sequence's ids keeps
  # them apart, as if each sequence had its own.
  stride = int(max(pred_ids.max(initial=0), true_ids.max(initial=0))) + 1
  accumulator = motmetrics.MOTAccumulator(auto_id=True)
  for s in range(true_ids.shape[0]):
    for t in range(true_ids.shape[1]):
      true_in, pred_in = true_ids[s, t] >= 0, pred_ids[s, t] >= 0
      similarity, allowed = similar(true_boxes[s, t][true_in],
                                    pred_boxes[s, t][pred_in])
      accumulator.update(s * stride + true_ids[s, t][true_in],
                         s * stride + pred_ids[s, t][pred_in],
                         np.where(allowed, 1.0 - similarity, np.nan))
  names = ["mota", "motp", "idf1", "num_switches", "num_detections",
           "num_misses", "num_false_positives"]
  row = motmetrics.metrics.create().compute(accumulator, metrics=names).iloc[0]
  return {
      "mota": float(row["mota"]),
      "motp": 1.0 - float(row["motp"]),
      "idf1": float(row["idf1"]),
      "id_switches": int(row["num_switches"]),
      "num_matches": int(row["num_detections"]),
      "num_misses": int(row["num_misses"]),
      "num_false_positives": int(row["num_false_positives"]),
  }
