"""Multi-object tracking metrics for sequences of boxes with identities.

Pure numpy (and scipy's assignment solver); runs no model. Boxes are
``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates, so a box's area is
``(x_max - x_min) * (y_max - y_min)``. Identities are per sequence: id 3 in one
sequence has nothing to do with id 3 in another. An id of -1 marks an absent
slot, whatever its box holds.

Frames are matched as in CLEAR-MOT (Bernardin & Stiefelhagen, 2008), the way
py-motmetrics does it, so that MOTA, MOTP and the id switches agree with it:

1. a ground-truth object keeps the predicted id it was last matched to (gaps
   allowed) if that id is present in the frame and the pair may match;
2. the remaining objects and predictions are matched by :func:`match_frame`.

IDF1 follows Ristani et al. (2016) and does not use these frame matches.

Which pairs may match, and how similar they are, is set by the `criterion`
argument of the public functions:

* `"iou"`: pairs with IoU >= `iou_threshold`; the similarity is the IoU.
* `"centre"`: pairs whose box centres are at most `max_distance` pixels
  apart; the similarity is `1 - distance / max_distance`, in [0, 1]. Meant for
  ground truth whose boxes are much narrower than the predicted ones (tight
  ink boxes of digits against square attention windows), where IoU fails even
  for perfect tracking.

Each argument applies to its criterion only (`iou_threshold` to `"iou"`,
`max_distance` to `"centre"`). Every use of the criterion (the optimal
assignment, the CLEAR-MOT continuation, MOTP, IDF1 and the py-motmetrics
cross-check in :mod:`apdr_jax.tracking_motmetrics`) goes through
:func:`_similarity`, so they cannot disagree.
"""

import functools

import numpy as np
from scipy import optimize

from apdr_jax.errors import ConfigError, DataError

CRITERIA = ("iou", "centre")


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """Intersection over union of every pair of boxes.

  Args:
    boxes_a: `[A, 4]` as (x_min, y_min, x_max, y_max).
    boxes_b: `[B, 4]`.

  Returns:
    `[A, B]` float64 IoU in [0, 1]; 0 where the union has no area.
  """
  a = np.asarray(boxes_a, np.float64)[:, None, :]
  b = np.asarray(boxes_b, np.float64)[None, :, :]
  width = np.clip(np.minimum(a[..., 2], b[..., 2])
                  - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
  height = np.clip(np.minimum(a[..., 3], b[..., 3])
                   - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
  inter = width * height
  area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(
      a[..., 3] - a[..., 1], 0, None)
  area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(
      b[..., 3] - b[..., 1], 0, None)
  union = area_a + area_b - inter
  # Degenerate boxes (zero area) overlap nothing rather than dividing by zero.
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_centre_distance(boxes_a: np.ndarray,
                        boxes_b: np.ndarray) -> np.ndarray:
  """Euclidean distance between the centres of every pair of boxes.

  Args:
    boxes_a: `[A, 4]` as (x_min, y_min, x_max, y_max).
    boxes_b: `[B, 4]`.

  Returns:
    `[A, B]` float64 distances in pixels.
  """
  centre_a = box_centres(boxes_a)[:, None, :]
  centre_b = box_centres(boxes_b)[None, :, :]
  return np.sqrt(((centre_a - centre_b) ** 2).sum(-1))


def box_centres(boxes):
  """`[K, 2]` float64 (x, y) centres of `[K, 4]` boxes."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _similarity(true_boxes, pred_boxes, criterion, iou_threshold,
                max_distance):
  """Similarity and allowed pairs under a matching criterion.

  The one place that defines the criteria (see the module docstring).

  Args:
    true_boxes: `[M, 4]` ground-truth boxes.
    pred_boxes: `[P, 4]` predicted boxes.
    criterion: `"iou"` or `"centre"`.
    iou_threshold: smallest IoU of a match, for `"iou"`.
    max_distance: largest centre distance of a match, for `"centre"`.

  Returns:
    `([M, P] float64 similarity, higher is better and 1 for equal boxes;
    [M, P] bool, True where the pair may match)`. The similarity of an allowed
    pair lies in [0, 1].
  """
  if criterion == "iou":
    iou = box_iou(true_boxes, pred_boxes)
    return iou, iou >= iou_threshold
  distance = box_centre_distance(true_boxes, pred_boxes)
  return 1.0 - distance / max_distance, distance <= max_distance


def _criterion(criterion, iou_threshold, max_distance):
  """Checks a matching criterion and binds it.

  Args:
    criterion: one of `CRITERIA`.
    iou_threshold: smallest IoU of a match, for `"iou"`.
    max_distance: largest centre distance of a match, for `"centre"`; must be
      finite and > 0 whichever the criterion.

  Returns:
    `similar(true_boxes, pred_boxes) -> (similarity, allowed)`, both `[M, P]`
    (see :func:`_similarity`).

  Raises:
    ConfigError: on an unknown criterion or a bad `max_distance`.
  """
  if criterion not in CRITERIA:
    raise ConfigError(f"criterion must be one of {CRITERIA}, got "
                      f"{criterion!r}")
  if not 0.0 < max_distance < np.inf:
    raise ConfigError(f"max_distance must be finite and > 0, got "
                      f"{max_distance!r}")
  return functools.partial(_similarity, criterion=criterion,
                           iou_threshold=iou_threshold,
                           max_distance=max_distance)


def _assign(similarity, allowed):
  """Optimal one-to-one assignment among allowed pairs.

  Args:
    similarity: `[M, P]`, in [0, 1] where allowed.
    allowed: `[M, P]` bool.

  Returns:
    `(row, column)` pairs, sorted by row: as many as possible, then the
    largest total similarity.
  """
  if not allowed.any():
    return []
  # A forbidden pair costs more than any total similarity of the other pairs
  # could win back, so the solver maximises the number of allowed pairs first.
  forbidden = min(similarity.shape) + 1.0
  rows, cols = optimize.linear_sum_assignment(
      np.where(allowed, -similarity, forbidden))
  keep = allowed[rows, cols]
  return [(int(i), int(j)) for i, j in zip(rows[keep], cols[keep])]


def match_frame(pred_boxes: np.ndarray, pred_valid: np.ndarray,
                true_boxes: np.ndarray, true_valid: np.ndarray,
                iou_threshold: float = 0.5, *, criterion: str = "iou",
                max_distance: float = 8.0) -> list[tuple[int, int]]:
  """Optimal one-to-one matching of one frame's predictions to ground truth.

  Only pairs allowed by the criterion may be matched (see the module
  docstring). Among those, the assignment first has as many pairs as
  possible, then the largest total similarity (the CLEAR-MOT rule; it
  maximises total similarity whenever that does not cost a match).

  Args:
    pred_boxes: `[P, 4]` predicted boxes.
    pred_valid: `[P]` bool, False for slots to ignore.
    true_boxes: `[M, 4]` ground-truth boxes.
    true_valid: `[M]` bool.
    iou_threshold: smallest IoU of a match, for `criterion="iou"`.
    criterion: `"iou"` or `"centre"`.
    max_distance: largest distance in pixels between the box centres of a
      match, for `criterion="centre"`.

  Returns:
    Matched `(true_index, pred_index)` pairs, indices into the `M` and `P`
    slots, sorted by true index.

  Raises:
    ConfigError: on an unknown criterion or `max_distance` <= 0.
  """
  similar = _criterion(criterion, iou_threshold, max_distance)
  similarity, allowed = similar(true_boxes, pred_boxes)
  allowed &= (np.asarray(true_valid, bool)[:, None]
              & np.asarray(pred_valid, bool)[None, :])
  return _assign(similarity, allowed)


def _check_inputs(pred_boxes, pred_ids, true_boxes, true_ids):
  """Returns the inputs as arrays after checking their shapes and ids.

  Raises:
    DataError: on a shape mismatch, non-integer ids, non-finite present boxes
      or an id repeated within a frame.
  """
  arrays = [np.asarray(pred_boxes, np.float64), np.asarray(pred_ids),
            np.asarray(true_boxes, np.float64), np.asarray(true_ids)]
  for name, boxes, ids in (("pred", *arrays[:2]), ("true", *arrays[2:])):
    if ids.ndim != 3 or boxes.shape != ids.shape + (4,):
      raise DataError(f"{name}_boxes {boxes.shape} and {name}_ids {ids.shape} "
                      "must be [n, T, K, 4] and [n, T, K]")
    if not np.issubdtype(ids.dtype, np.integer):
      raise DataError(f"{name}_ids must be integers, got {ids.dtype}")
    if not np.isfinite(boxes[ids >= 0]).all():
      raise DataError(f"{name}_boxes are not finite where present")
    # Sorting each frame's ids puts repeats next to each other.
    ordered = np.sort(ids, axis=-1)
    repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    if repeated.any():
      raise DataError(f"{name}_ids repeat an id within a frame")
  if arrays[1].shape[:2] != arrays[3].shape[:2]:
    raise DataError(f"pred [n, T] = {arrays[1].shape[:2]} differs from true "
                    f"[n, T] = {arrays[3].shape[:2]}")
  return arrays


def _sequence_matches(pred_boxes, pred_ids, true_boxes, true_ids, similar):
  """CLEAR-MOT matches of one sequence (see the module docstring).

  Args:
    pred_boxes: `[T, P, 4]`.
    pred_ids: `[T, P]`, -1 where absent.
    true_boxes: `[T, M, 4]`.
    true_ids: `[T, M]`, -1 where absent.
    similar: the bound criterion from :func:`_criterion`.

  Returns:
    Per frame, a dict `{true_id: (pred_id, similarity)}` of its matches, and
    the number of id switches.
  """
  last = {}  # true id -> predicted id it was last matched to
  frames, switches = [], 0
  for t in range(true_ids.shape[0]):
    true_t, pred_t = true_ids[t].tolist(), pred_ids[t].tolist()
    similarity, allowed = similar(true_boxes[t], pred_boxes[t])  # [M, P]
    true_free, pred_free = true_ids[t] >= 0, pred_ids[t] >= 0
    frame = {}
    # Step 1: keep last correspondences still valid, in slot order as
    # py-motmetrics does.
    for i in np.flatnonzero(true_free):
      if true_t[i] not in last or last[true_t[i]] not in pred_t:
        continue
      j = pred_t.index(last[true_t[i]])
      if pred_free[j] and allowed[i, j]:
        frame[true_t[i]] = (pred_t[j], float(similarity[i, j]))
        true_free[i], pred_free[j] = False, False
    # Step 2: optimal matching of the rest; a changed id is a switch.
    allowed &= true_free[:, None] & pred_free[None, :]
    for i, j in _assign(similarity, allowed):
      switches += int(last.get(true_t[i], pred_t[j]) != pred_t[j])
      frame[true_t[i]] = (pred_t[j], float(similarity[i, j]))
    last.update((g, h) for g, (h, _) in frame.items())
    frames.append(frame)
  return frames, switches


def _consistency(frames, true_ids):
  """Consistent and total ground-truth transitions of one sequence.

  Args:
    frames: per frame `{true_id: (pred_id, similarity)}` from
      `_sequence_matches`.
    true_ids: `[T, M]`, -1 where absent.

  Returns:
    `(consistent, pairs)` ints.
  """
  consistent = pairs = 0
  for t in range(1, len(frames)):
    both = set(true_ids[t - 1][true_ids[t - 1] >= 0].tolist()) & set(
        true_ids[t][true_ids[t] >= 0].tolist())
    pairs += len(both)
    for g in both:
      before, now = frames[t - 1].get(g), frames[t].get(g)
      consistent += int(before is not None and now is not None
                        and before[0] == now[0])
  return consistent, pairs


def _id_true_positives(pred_boxes, pred_ids, true_boxes, true_ids, similar):
  """IDTP of one sequence (Ristani et al., 2016).

  Args:
    pred_boxes: `[T, P, 4]`.
    pred_ids: `[T, P]`, -1 where absent.
    true_boxes: `[T, M, 4]`.
    true_ids: `[T, M]`, -1 where absent.
    similar: the bound criterion from :func:`_criterion`.

  Returns:
    The largest total, over one-to-one pairings of ground-truth and predicted
    trajectories, of the frames where the paired boxes may match.
  """
  true_set = np.unique(true_ids[true_ids >= 0])
  pred_set = np.unique(pred_ids[pred_ids >= 0])
  if not true_set.size or not pred_set.size:
    return 0
  overlap = np.zeros((true_set.size, pred_set.size), np.int64)  # frames
  for t in range(true_ids.shape[0]):
    _, hit = similar(true_boxes[t], pred_boxes[t])
    hit &= (true_ids[t] >= 0)[:, None] & (pred_ids[t] >= 0)[None, :]
    i, j = np.nonzero(hit)
    overlap[np.searchsorted(true_set, true_ids[t, i]),
            np.searchsorted(pred_set, pred_ids[t, j])] += 1
  rows, cols = optimize.linear_sum_assignment(overlap, maximize=True)
  return int(overlap[rows, cols].sum())


def _ratio(numerator, denominator) -> float:
  # Undefined scores (nothing to score) are NaN, as in py-motmetrics.
  return float(numerator / denominator) if denominator else float("nan")


def tracking_metrics(pred_boxes: np.ndarray, pred_ids: np.ndarray,
                     true_boxes: np.ndarray, true_ids: np.ndarray,
                     iou_threshold: float = 0.5, *, criterion: str = "iou",
                     max_distance: float = 8.0) -> dict:
  """Tracking scores of predicted trajectories against ground truth.

  Frames are matched with the CLEAR-MOT rule of the module docstring, under
  `criterion` (`"iou"` or `"centre"`, also there). Over all
  sequences, with `G` present ground-truth boxes and `H` present predicted
  boxes:

  * `num_matches`: matched pairs (py-motmetrics' `num_detections`, i.e. its
    matches plus switches); `num_misses = G - num_matches`;
    `num_false_positives = H - num_matches`.
  * `id_switches`: times a ground-truth object is matched to a predicted id
    other than the one it was last matched to, however many frames ago.
  * `mota`: `1 - (num_misses + num_false_positives + id_switches) / G`.
  * `motp`: mean similarity of the matched pairs, i.e. IoU or
    `1 - distance / max_distance` (higher is better; py-motmetrics' `motp`
    is `1 - motp` here).
  * `idf1`: `2 IDTP / (G + H)`, where per sequence IDTP is the largest total,
    over one-to-one pairings of ground-truth ids with predicted ids, of the
    frames where the paired boxes may match under the criterion.
  * `tracking_pairs`: number of `(sequence, t, ground-truth id)` with
    `1 <= t < T` and the id present in both frames `t - 1` and `t`.
  * `tracking_consistency`: fraction of those pairs where the object is
    matched in frame `t - 1` and in frame `t`, to the same predicted id. A
    pair with the object unmatched in either frame is not consistent.

  Scores with a zero denominator are NaN.

  Args:
    pred_boxes: `[n, T, P, 4]` predicted boxes (x_min, y_min, x_max, y_max).
    pred_ids: `[n, T, P]` int predicted ids, -1 where absent.
    true_boxes: `[n, T, M, 4]` ground-truth boxes.
    true_ids: `[n, T, M]` int ground-truth ids, -1 where absent.
    iou_threshold: smallest IoU of a match, for `criterion="iou"`.
    criterion: `"iou"` or `"centre"`.
    max_distance: largest distance in pixels between the box centres of a
      match, for `criterion="centre"`.

  Returns:
    A dict of Python floats (`mota`, `motp`, `idf1`, `tracking_consistency`,
    `threshold`: `iou_threshold` or `max_distance`, whichever `criterion`
    used), ints (`id_switches`, `num_matches`, `num_misses`,
    `num_false_positives`, `tracking_pairs`) and the str `criterion`.

  Raises:
    DataError: if shapes disagree, ids are not integers or repeat within a
      frame, or a present box is not finite.
    ConfigError: on an unknown criterion or `max_distance` <= 0.
  """
  similar = _criterion(criterion, iou_threshold, max_distance)
  pred_boxes, pred_ids, true_boxes, true_ids = _check_inputs(
      pred_boxes, pred_ids, true_boxes, true_ids)
  num_true, num_pred = int((true_ids >= 0).sum()), int((pred_ids >= 0).sum())
  switches = consistent = pairs = idtp = 0
  similarities = []
  for s in range(true_ids.shape[0]):
    seq = (pred_boxes[s], pred_ids[s], true_boxes[s], true_ids[s])
    frames, seq_switches = _sequence_matches(*seq, similar)
    switches += seq_switches
    similarities += [v for frame in frames for _, v in frame.values()]
    seq_consistent, seq_pairs = _consistency(frames, true_ids[s])
    consistent, pairs = consistent + seq_consistent, pairs + seq_pairs
    idtp += _id_true_positives(*seq, similar)
  matches = len(similarities)
  misses, false_positives = num_true - matches, num_pred - matches
  return {
      "mota": 1.0 - _ratio(misses + false_positives + switches, num_true),
      "motp": _ratio(sum(similarities), matches),
      "idf1": _ratio(2 * idtp, num_true + num_pred),
      "tracking_consistency": _ratio(consistent, pairs),
      "tracking_pairs": pairs,
      "id_switches": switches,
      "num_matches": matches,
      "num_misses": misses,
      "num_false_positives": false_positives,
      "criterion": criterion,
      "threshold": float(iou_threshold if criterion == "iou"
                         else max_distance),
  }
