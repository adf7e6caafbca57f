"""Tests of the animated GIFs of apdr_jax.plotting."""

import numpy as np
import pytest
from PIL import Image

from apdr_jax import plotting

T, H, W, N, ZOOM = 4, 12, 16, 3, 2


def _sequence(seed=0):
  """Random images with one box per slot that moves right by a pixel a frame.

  Returns:
    images `[T, H, W]`, reconstructions `[T, H, W]`, boxes `[T, N, 4]`,
    presence `[T, N]`, ids `[T, N]`.
  """
  rng = np.random.default_rng(seed)
  boxes = np.zeros((T, N, 4), np.float32)
  for k in range(N):
    boxes[:, k] = [[1 + t, 1 + 3 * k, 5 + t, 3 + 3 * k] for t in range(T)]
  presence = np.ones((T, N), np.float32)
  presence[:, 2] = 0  # slot 2 is never drawn
  ids = np.tile(np.array([5, 1, 0]), (T, 1))
  return (rng.random((T, H, W)), rng.random((T, H, W)), boxes, presence, ids)


def _frames(path):
  with Image.open(path) as gif:
    assert gif.is_animated
    info = dict(gif.info)
    frames = []
    for t in range(gif.n_frames):
      gif.seek(t)
      frames.append(np.asarray(gif.convert("RGB")))
  return info, frames


def test_sequence_frames_layout():
  images, recons, boxes, presence, ids = _sequence()
  frames = plotting.sequence_frames(images, recons, boxes, presence, ids,
                                    zoom=ZOOM)
  assert len(frames) == T
  assert frames[0].size == (2 * (W * ZOOM + 2), H * ZOOM + 2)
  # The right panel is the reconstruction, without boxes.
  right = np.asarray(frames[1])[:H * ZOOM, W * ZOOM + 2:2 * W * ZOOM + 2, 0]
  np.testing.assert_array_equal(
      right, np.repeat(np.repeat((recons[1] * 255).astype(np.uint8), ZOOM, 0),
                       ZOOM, 1))
  three = plotting.sequence_frames(images, recons, boxes, presence, ids,
                                   true_images=images, zoom=ZOOM)
  assert three[0].size == (3 * (W * ZOOM + 2), H * ZOOM + 2)


@pytest.mark.parametrize("stacked", [False, True])
def test_gif_is_animated_with_box_colours(tmp_path, stacked):
  args = _sequence()
  _, _, boxes, _, ids = args
  rows = 2 if stacked else 1
  if stacked:  # [n, T, ...]: a second sequence with other images, same boxes
    args = [np.stack([a, b]) for a, b in zip(args, _sequence(1))]
  path = tmp_path / "sequence.gif"
  plotting.save_sequence_gif(str(path), *args, zoom=ZOOM, frame_ms=120)
  info, frames = _frames(path)
  assert len(frames) == T
  assert info["loop"] == 0 and info["duration"] == 120
  assert frames[0].shape == (rows * (H * ZOOM + 2), 2 * (W * ZOOM + 2), 3)
  for row in range(rows):
    top = row * (H * ZOOM + 2)
    for t in (0, T - 1):
      for k in range(2):
        x_min, y_min = (int(v) * ZOOM for v in boxes[t, k, :2])
        # The top-left corner of the outline of slot k has the colour of id k.
        colour = plotting.PALETTE[ids[t, k] % len(plotting.PALETTE)]
        assert tuple(frames[t][top + y_min, x_min]) == colour, (row, t, k)
  # Slot 2 (id 0, colour PALETTE[0]) is absent: PALETTE[0] is never drawn.
  assert not (frames[0] == plotting.PALETTE[0]).all(-1).any()


def test_gif_keeps_grey_levels(tmp_path):
  images, recons, boxes, presence, ids = _sequence()
  path = tmp_path / "grey.gif"
  plotting.save_sequence_gif(str(path), images, recons, boxes, presence, ids,
                             zoom=1)
  _, frames = _frames(path)
  right = frames[2][:H, W + 2:2 * W + 2].astype(int)
  expected = (recons[2] * 255).astype(np.uint8).astype(int)
  assert np.abs(right - expected[..., None]).max() <= 1
