"""Tests of apdr_jax.tracking: frame matching and MOT scores."""

import math

import numpy as np
import pytest

from apdr_jax import tracking
from apdr_jax import tracking_motmetrics
from apdr_jax.errors import ConfigError, DataError

# Two far-apart 10x10 objects, still in every frame.
BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_B = [30.0, 30.0, 40.0, 40.0]
FAR = [60.0, 0.0, 70.0, 10.0]


def _still(frames, boxes, ids):
  """`[1, T, K, 4]` boxes and `[1, T, K]` ids repeated over frames."""
  return (np.tile(np.asarray(boxes, np.float32), (1, frames, 1, 1)),
          np.tile(np.asarray(ids, np.int32), (1, frames, 1)))


def test_box_iou_known_values():
  iou = tracking.box_iou([BOX_A], [BOX_A, [5, 0, 15, 10], BOX_B, [3, 3, 3, 9]])
  np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_match_frame_threshold():
  true, pred = np.array([BOX_A]), np.array([[5.0, 0, 15, 10]])  # IoU 1/3
  valid = np.array([True])
  assert tracking.match_frame(pred, valid, true, valid, 0.3) == [(0, 0)]
  assert tracking.match_frame(pred, valid, true, valid, 0.5) == []


def test_match_frame_is_optimal_not_greedy():
  # Greedy would take A-X (IoU .82) and leave B unmatched; the optimum
  # matches A-Y (.67) and B-X (.54).
  true = np.array([[0.0, 0, 10, 10], [4, 0, 14, 10]])  # A, B
  pred = np.array([[1.0, 0, 11, 10], [-2, 0, 8, 10]])  # X, Y
  valid = np.ones(2, bool)
  assert tracking.match_frame(pred, valid, true, valid, 0.5) == [(0, 1), (1, 0)]


def test_match_frame_ignores_invalid_slots():
  boxes = np.array([BOX_A, BOX_B])
  pred_valid = np.array([True, False])
  assert tracking.match_frame(boxes, pred_valid, boxes, np.ones(2, bool),
                              0.5) == [(0, 0)]
  assert tracking.match_frame(boxes, np.zeros(2, bool), boxes,
                              np.ones(2, bool), 0.5) == []


def test_perfect_tracking():
  boxes, ids = _still(5, [BOX_A, BOX_B], [0, 1])
  # Predicted ids need not equal true ids, only stay put.
  m = tracking.tracking_metrics(boxes, ids + 7, boxes, ids)
  assert m["tracking_consistency"] == 1.0 and m["tracking_pairs"] == 8
  assert m["mota"] == 1.0 and m["idf1"] == 1.0 and m["motp"] == 1.0
  assert m["id_switches"] == 0 and m["num_matches"] == 10
  assert m["num_misses"] == 0 and m["num_false_positives"] == 0


def test_swapped_ids_mid_sequence():
  # Frames 0-1: A->0, B->1; frames 2-3: A->1, B->0. At frame 2 the last ids no
  # longer overlap, so both objects switch once (2 switches); frame 3 keeps
  # the new ids. Transitions 1->2 are inconsistent: 4 of 6 are consistent.
  true_boxes, true_ids = _still(4, [BOX_A, BOX_B], [0, 1])
  pred_ids = np.array([[[0, 1], [0, 1], [1, 0], [1, 0]]], np.int32)
  m = tracking.tracking_metrics(true_boxes, pred_ids, true_boxes, true_ids)
  assert m["id_switches"] == 2
  assert m["tracking_pairs"] == 6
  assert m["tracking_consistency"] == pytest.approx(4 / 6)
  assert m["mota"] == pytest.approx(1 - 2 / 8)
  # Best id pairing keeps 2 frames per object: IDTP 4 of 8 + 8 boxes.
  assert m["idf1"] == pytest.approx(2 * 4 / 16)
  assert m["num_matches"] == 8


def test_missed_detection_then_new_id_is_a_switch_across_the_gap():
  true_boxes, true_ids = _still(3, [BOX_A], [0])
  pred_ids = np.array([[[4], [-1], [5]]], np.int32)
  m = tracking.tracking_metrics(true_boxes, pred_ids, true_boxes, true_ids)
  assert m["num_misses"] == 1 and m["num_matches"] == 2
  assert m["id_switches"] == 1  # 4 -> 5, with frame 1 missed in between
  assert m["tracking_consistency"] == 0.0 and m["tracking_pairs"] == 2
  assert m["mota"] == pytest.approx(1 - 2 / 3)
  assert m["idf1"] == pytest.approx(2 * 1 / 5)


def test_missed_detection_same_id_is_no_switch():
  true_boxes, true_ids = _still(3, [BOX_A], [0])
  pred_ids = np.array([[[4], [-1], [4]]], np.int32)
  m = tracking.tracking_metrics(true_boxes, pred_ids, true_boxes, true_ids)
  assert m["id_switches"] == 0 and m["num_misses"] == 1
  assert m["mota"] == pytest.approx(2 / 3)
  assert m["idf1"] == pytest.approx(2 * 2 / 5)
  assert m["tracking_consistency"] == 0.0


def test_last_match_is_kept_over_a_better_new_one():
  # CLEAR-MOT step 1: id 0 still overlaps enough (IoU .6), so it keeps the
  # object although id 1 overlaps better (.9); id 1 is a false positive.
  true_boxes, true_ids = _still(2, [BOX_A], [0])
  pred_boxes = np.array([[[BOX_A, FAR], [[0, 0, 10, 6], [0, 0, 10, 9]]]])
  pred_ids = np.array([[[0, -1], [0, 1]]], np.int32)
  m = tracking.tracking_metrics(pred_boxes, pred_ids, true_boxes, true_ids)
  assert m["id_switches"] == 0 and m["num_false_positives"] == 1
  assert m["motp"] == pytest.approx((1.0 + 0.6) / 2)
  assert m["tracking_consistency"] == 1.0

def test_false_positive():
  true_boxes, true_ids = _still(3, [BOX_A, FAR], [0, -1])
  pred_ids = np.array([[[0, -1], [0, 9], [0, -1]]], np.int32)
  m = tracking.tracking_metrics(true_boxes, pred_ids, true_boxes, true_ids)
  assert m["num_false_positives"] == 1 and m["num_misses"] == 0
  assert m["mota"] == pytest.approx(1 - 1 / 3)
  assert m["idf1"] == pytest.approx(2 * 3 / 7)
  assert m["tracking_consistency"] == 1.0 and m["id_switches"] == 0


def test_below_threshold_is_miss_and_false_positive():
  true_boxes, true_ids = _still(2, [BOX_A], [0])
  pred_boxes, _ = _still(2, [[5.0, 0, 15, 10]], [0])  # IoU 1/3
  m = tracking.tracking_metrics(pred_boxes, true_ids, true_boxes, true_ids, 0.5)
  assert m["num_matches"] == 0 and m["num_misses"] == 2
  assert m["num_false_positives"] == 2
  assert m["mota"] == -1.0 and m["idf1"] == 0.0 and math.isnan(m["motp"])
  loose = tracking.tracking_metrics(pred_boxes, true_ids, true_boxes, true_ids,
                                    0.3)
  assert loose["num_matches"] == 2 and loose["motp"] == pytest.approx(1 / 3)


def test_empty_frames_and_ids_per_sequence():
  boxes, ids = _still(3, [BOX_A], [0])
  ids[0, 1] = -1  # the object leaves for frame 1: no transition to score
  both = np.concatenate([boxes, boxes]), np.concatenate([ids, ids])
  # Sequence 1 uses the predicted id 0 for a different object: no switch, as
  # ids do not carry across sequences.
  m = tracking.tracking_metrics(*both, *both)
  assert m["tracking_pairs"] == 0 and math.isnan(m["tracking_consistency"])
  assert m["mota"] == 1.0 and m["num_matches"] == 4 and m["id_switches"] == 0


def test_all_empty():
  boxes = np.zeros((2, 3, 2, 4), np.float32)
  ids = np.full((2, 3, 2), -1, np.int32)
  m = tracking.tracking_metrics(boxes, ids, boxes, ids)
  assert m["num_matches"] == m["num_misses"] == m["num_false_positives"] == 0
  assert all(math.isnan(m[k]) for k in ("mota", "motp", "idf1",
                                        "tracking_consistency"))


def test_slot_counts_may_differ():
  true_boxes, true_ids = _still(2, [BOX_A], [0])
  pred_boxes, pred_ids = _still(2, [FAR, BOX_A, BOX_B], [-1, 3, 5])
  m = tracking.tracking_metrics(pred_boxes, pred_ids, true_boxes, true_ids)
  assert m["num_matches"] == 2 and m["num_false_positives"] == 2


@pytest.mark.parametrize("change", ["box_last_axis", "ids_frames", "float_ids",
                                    "repeated_id", "nan_box"])
def test_bad_inputs(change):
  boxes, ids = _still(3, [BOX_A, BOX_B], [0, 1])
  pred_boxes, pred_ids = boxes.copy(), ids.copy()
  if change == "box_last_axis":
    pred_boxes = pred_boxes[..., :3]
  elif change == "ids_frames":
    pred_boxes, pred_ids = pred_boxes[:, :2], pred_ids[:, :2]
  elif change == "float_ids":
    pred_ids = pred_ids.astype(np.float32)
  elif change == "repeated_id":
    pred_ids[0, 1] = 0
  else:
    pred_boxes[0, 0, 0, 0] = np.nan
  with pytest.raises(DataError):
    tracking.tracking_metrics(pred_boxes, pred_ids, boxes, ids)


def test_nan_box_of_absent_slot_is_ignored():
  boxes, ids = _still(2, [BOX_A, BOX_B], [0, -1])
  pred = boxes.copy()
  pred[:, :, 1] = np.nan
  assert tracking.tracking_metrics(pred, ids, boxes, ids)["mota"] == 1.0


# A narrow "1"-like ink box (4x20) and the 20x20 window centred on it.
INK = [8.0, 0.0, 12.0, 20.0]
WINDOW = [0.0, 0.0, 20.0, 20.0]


def _shifted(box, dx):
  return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_box_centre_distance_known_values():
  distance = tracking.box_centre_distance([WINDOW], [INK, [3, 4, 23, 24]])
  np.testing.assert_allclose(distance, [[0.0, 5.0]])


def test_centre_matches_narrow_box_that_iou_misses():
  true, pred, valid = np.array([INK]), np.array([WINDOW]), np.array([True])
  assert tracking.box_iou(true, pred)[0, 0] == pytest.approx(0.2)
  assert tracking.match_frame(pred, valid, true, valid, 0.5) == []
  assert tracking.match_frame(pred, valid, true, valid,
                              criterion="centre") == [(0, 0)]
  true_boxes, ids = _still(3, [INK], [0])
  pred_boxes, _ = _still(3, [WINDOW], [0])
  iou = tracking.tracking_metrics(pred_boxes, ids, true_boxes, ids)
  assert iou["num_matches"] == 0 and iou["mota"] == -1.0
  centre = tracking.tracking_metrics(pred_boxes, ids, true_boxes, ids,
                                     criterion="centre")
  assert centre["num_matches"] == 3 and centre["mota"] == 1.0
  assert centre["idf1"] == 1.0 and centre["motp"] == 1.0
  assert centre["tracking_consistency"] == 1.0


@pytest.mark.parametrize("dx, matched", [(4.0, True), (8.0, True),
                                         (9.0, False)])
def test_centre_max_distance(dx, matched):
  true_boxes, ids = _still(2, [INK], [0])
  pred_boxes, _ = _still(2, [_shifted(WINDOW, dx)], [0])
  m = tracking.tracking_metrics(pred_boxes, ids, true_boxes, ids,
                                criterion="centre", max_distance=8.0)
  assert m["num_matches"] == (2 if matched else 0)
  assert m["idf1"] == (1.0 if matched else 0.0)
  if matched:  # similarity 1 - distance / max_distance
    assert m["motp"] == pytest.approx(1 - dx / 8)
  valid = np.array([True])
  assert tracking.match_frame(pred_boxes[0, 0], valid, true_boxes[0, 0], valid,
                              criterion="centre") == ([(0, 0)] if matched
                                                      else [])


def test_centre_last_match_is_kept_over_a_closer_new_one():
  # As test_last_match_is_kept_over_a_better_new_one, by centre distance: id 0
  # is 6 px off (allowed) and keeps the object; id 1, 1 px off, is a false
  # positive.
  true_boxes, true_ids = _still(2, [INK], [0])
  pred_boxes = np.array([[[WINDOW, FAR],
                          [_shifted(WINDOW, 6), _shifted(WINDOW, 1)]]])
  pred_ids = np.array([[[0, -1], [0, 1]]], np.int32)
  m = tracking.tracking_metrics(pred_boxes, pred_ids, true_boxes, true_ids,
                                criterion="centre", max_distance=8.0)
  assert m["id_switches"] == 0 and m["num_false_positives"] == 1
  assert m["motp"] == pytest.approx((1.0 + 0.25) / 2)


def test_swap_counts_the_same_under_both_criteria():
  true_boxes, true_ids = _still(4, [BOX_A, BOX_B], [0, 1])
  pred_ids = np.array([[[0, 1], [0, 1], [1, 0], [1, 0]]], np.int32)
  args = (true_boxes, pred_ids, true_boxes, true_ids)
  iou = tracking.tracking_metrics(*args)
  centre = tracking.tracking_metrics(*args, criterion="centre")
  assert iou["id_switches"] == centre["id_switches"] == 2
  assert (iou.pop("criterion"), iou.pop("threshold")) == ("iou", 0.5)
  assert (centre.pop("criterion"), centre.pop("threshold")) == ("centre", 8.0)
  assert iou == centre


@pytest.mark.parametrize("rule", [dict(criterion="center"),
                                  dict(criterion="IoU"),
                                  dict(criterion="centre", max_distance=0.0),
                                  dict(max_distance=-1.0),
                                  dict(criterion="centre",
                                       max_distance=float("nan"))])
def test_bad_criterion(rule):
  boxes, ids = _still(2, [BOX_A], [0])
  valid = np.array([True])
  bad = str(rule.get("max_distance", rule.get("criterion")))
  with pytest.raises(ConfigError, match=bad):
    tracking.tracking_metrics(boxes, ids, boxes, ids, **rule)
  with pytest.raises(ConfigError, match=bad):
    tracking.match_frame(boxes[0, 0], valid, boxes[0, 0], valid, **rule)


def _random_case(seed, n=3, frames=8, objects=3, slots=4):
  """Jittered, dropped, swapped and spurious predictions of moving boxes."""
  rng = np.random.default_rng(seed)
  start = rng.uniform(0, 40, (n, 1, objects, 2))
  corner = start + np.cumsum(rng.normal(0, 2, (n, frames, objects, 2)), 1)
  true_boxes = np.concatenate([corner, corner + 10], -1)
  true_ids = np.where(rng.random((n, frames, objects)) < 0.85,
                      np.arange(objects), -1)
  pred_boxes = np.concatenate(
      [true_boxes + rng.normal(0, 1.5, true_boxes.shape),
       rng.uniform(0, 50, (n, frames, slots - objects, 2)).repeat(2, -1)
       + [0, 0, 8, 8]], axis=2)
  pred_ids = np.tile(rng.permutation(slots), (n, frames, 1))
  swap = rng.random((n, frames)) < 0.2
  pred_ids[swap, :2] = pred_ids[swap][:, 1::-1]
  present = np.concatenate(
      [true_ids >= 0, np.ones((n, frames, slots - objects), bool)],
      -1) & (rng.random((n, frames, slots)) < 0.8)
  return pred_boxes, np.where(present, pred_ids, -1), true_boxes, true_ids


def _hand_made_cases():
  boxes, ids = _still(4, [BOX_A, BOX_B], [0, 1])
  swapped = np.array([[[0, 1], [0, 1], [1, 0], [1, 0]]])
  gap = np.array([[[4, 7], [-1, 7], [5, 8], [5, -1]]])
  return [(boxes, swapped, boxes, ids), (boxes, gap, boxes, ids)]


# Matching rules the cross-check runs: `criterion` and its threshold.
CRITERIA = [dict(iou_threshold=0.3), dict(iou_threshold=0.5),
            dict(criterion="centre", max_distance=3.0),
            dict(criterion="centre", max_distance=8.0)]


@pytest.mark.parametrize("case", range(6))
def test_agrees_with_motmetrics(case):
  pytest.importorskip("motmetrics")
  cases = _hand_made_cases()
  args = cases[case] if case < len(cases) else _random_case(case)
  for rule in CRITERIA:
    ours = tracking.tracking_metrics(*args, **rule)
    theirs = tracking_motmetrics.motmetrics_summary(*args, **rule)
    assert ours["num_matches"] > 0
    for key, value in theirs.items():
      assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_count_accuracy_by_frame_index_and_over_and_under_counts():
  from apdr_jax import sequence_evaluation
  true = np.array([[1, 1, 2], [0, 1, 1]])
  predicted = np.array([[1, 2, 2], [0, 1, 0]])
  got = sequence_evaluation.count_accuracy(predicted, true)
  assert got["frame_count_accuracy"] == pytest.approx(4 / 6)
  assert got["frame_over_count"] == pytest.approx(1 / 6)
  assert got["frame_under_count"] == pytest.approx(1 / 6)
  assert [got[f"frame_count_accuracy_at_{t}"] for t in range(3)] == [
      1.0, 0.5, 0.5]
  assert got["frame_count_accuracy_1"] == 0.5  # true 1 four times, right twice
  assert got["sequence_count_accuracy"] == 0.0
