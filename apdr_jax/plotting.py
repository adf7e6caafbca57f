"""Pictures from arrays: reconstructions with boxes (takes arrays, runs no model)."""

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours for slots or object ids (cycled).
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def _to_rgb(image: np.ndarray, zoom: int) -> Image.Image:
  gray = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  return Image.fromarray(gray).convert("RGB").resize(
      (image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, presence: np.ndarray,
               ids: np.ndarray | None = None, zoom: int = 4) -> Image.Image:
  """One image with the boxes of its present objects.

  Args:
    image: `[H, W]` in [0, 1].
    boxes: `[N, 4]` as (x_min, y_min, x_max, y_max) in pixels.
    presence: `[N]` in {0, 1}.
    ids: `[N]` ints choosing each box's colour (default: the slot index).
    zoom: integer upscaling for visibility.
  """
  picture = _to_rgb(image, zoom)
  draw = ImageDraw.Draw(picture)
  for slot, (box, present) in enumerate(zip(boxes, presence)):
    if present > 0.5:
      colour = PALETTE[int(slot if ids is None else ids[slot]) % len(PALETTE)]
      draw.rectangle([float(v) * zoom for v in box], outline=colour, width=2)
  return picture


def reconstruction_grid(images, reconstructions, boxes, presence,
                        zoom: int = 4, backgrounds=None) -> Image.Image:
  """Rows of (input with boxes, reconstruction) pairs; with `backgrounds`,
  (input with boxes, inferred background, reconstruction) triples.

  Args:
    images: `[num, H, W]` in [0, 1].
    reconstructions: `[num, H, W]`.
    boxes: `[num, N, 4]`.
    presence: `[num, N]`.
    zoom: integer upscaling.
    backgrounds: optional `[num, H, W]`, a background model's inference.
  """
  num, height, width = images.shape
  cols = min(num, 8)
  rows_per = 2 if backgrounds is None else 3
  rows = rows_per * ((num + cols - 1) // cols)
  tile_h, tile_w = height * zoom + 2, width * zoom + 2
  grid = Image.new("RGB", (cols * tile_w, rows * tile_h), (40, 40, 40))
  for i in range(num):
    r, c = rows_per * (i // cols), i % cols
    grid.paste(draw_boxes(images[i], boxes[i], presence[i], zoom=zoom),
               (c * tile_w, r * tile_h))
    if backgrounds is not None:
      grid.paste(_to_rgb(backgrounds[i], zoom), (c * tile_w, (r + 1) * tile_h))
    grid.paste(_to_rgb(reconstructions[i], zoom),
               (c * tile_w, (r + rows_per - 1) * tile_h))
  return grid


def save_reconstructions(path: str, images, reconstructions, boxes, presence,
                         backgrounds=None, zoom: int = 4) -> None:
  """Writes `reconstruction_grid(...)` as a PNG."""
  reconstruction_grid(
      np.asarray(images), np.asarray(reconstructions), np.asarray(boxes),
      np.asarray(presence), zoom,
      None if backgrounds is None else np.asarray(backgrounds)).save(path)


def sequence_frames(images, reconstructions, boxes, presence, ids,
                    true_images=None, zoom: int = 4) -> list[Image.Image]:
  """One picture per frame of a sequence: input with boxes | reconstruction.

  Args:
    images: `[T, H, W]` model inputs in [0, 1].
    reconstructions: `[T, H, W]` in [0, 1].
    boxes: `[T, N, 4]` as (x_min, y_min, x_max, y_max) in pixels.
    presence: `[T, N]` in {0, 1}.
    ids: `[T, N]` ints; a box takes the colour `PALETTE[id % len(PALETTE)]`,
      so an object keeps its colour across frames.
    true_images: optional `[T, H, W]` shown as a third panel (e.g. the clean
      target of a noisy input).
    zoom: integer upscaling.

  Returns:
    `T` RGB images of size `(panels * (W * zoom + 2), H * zoom + 2)`, with
    `panels` 2 or 3.
  """
  images, reconstructions = np.asarray(images), np.asarray(reconstructions)
  boxes, presence = np.asarray(boxes), np.asarray(presence)
  ids = np.asarray(ids)
  frames, height, width = images.shape
  panels = 2 if true_images is None else 3
  tile_w = width * zoom + 2
  pictures = []
  for t in range(frames):
    picture = Image.new("RGB", (panels * tile_w, height * zoom + 2),
                        (40, 40, 40))
    picture.paste(draw_boxes(images[t], boxes[t], presence[t], ids[t], zoom),
                  (0, 0))
    picture.paste(_to_rgb(reconstructions[t], zoom), (tile_w, 0))
    if true_images is not None:
      picture.paste(_to_rgb(np.asarray(true_images)[t], zoom), (2 * tile_w, 0))
    pictures.append(picture)
  return pictures


# GIF frames hold at most 256 colours: the box colours exactly, then greys.
_GIF_COLOURS = np.concatenate([
    np.asarray(PALETTE),
    np.repeat(np.round(np.linspace(0, 255, 256 - len(PALETTE)))[:, None], 3, 1),
]).astype(np.int64)  # [256, 3]


def _to_indexed(picture: Image.Image) -> Image.Image:
  """Maps an RGB picture to `_GIF_COLOURS` by nearest colour.

  Pillow's own quantisation could shift box colours; here they stay exact and
  greys move by at most half a level.
  """
  rgb = np.asarray(picture, np.int64)  # [h, w, 3]
  colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
  distance = ((colours[:, None, :] - _GIF_COLOURS[None]) ** 2).sum(-1)
  index = distance.argmin(1)[inverse.reshape(-1)].reshape(rgb.shape[:2])
  indexed = Image.fromarray(index.astype(np.uint8))  # "L"; putpalette makes "P"
  indexed.putpalette(_GIF_COLOURS.astype(np.uint8).tobytes())
  return indexed


def save_sequence_gif(path: str, images, reconstructions, boxes, presence,
                      ids, zoom: int = 4, frame_ms: int = 300) -> None:
  """Writes sequences as a looping animated GIF, one `sequence_frames` row each.

  Pillow merges consecutive identical frames into one longer frame, so a
  sequence that does not change shows fewer than `T` frames (same duration).

  Args:
    path: output file, usually `*.gif`.
    images: `[n, T, H, W]` (rows stacked top to bottom) or `[T, H, W]`.
    reconstructions: like `images`.
    boxes: `[n, T, N, 4]` or `[T, N, 4]`.
    presence: `[n, T, N]` or `[T, N]`.
    ids: `[n, T, N]` or `[T, N]` ints choosing the box colours.
    zoom: integer upscaling.
    frame_ms: display time of each frame in milliseconds.
  """
  arrays = [np.asarray(a) for a in (images, reconstructions, boxes, presence,
                                    ids)]
  if arrays[0].ndim == 3:  # a single sequence
    arrays = [a[None] for a in arrays]
  rows = [sequence_frames(*seq, zoom=zoom) for seq in zip(*arrays)]
  width, height = rows[0][0].size
  frames = []
  for t in range(len(rows[0])):
    frame = Image.new("RGB", (width, height * len(rows)))
    for r, row in enumerate(rows):
      frame.paste(row[t], (0, r * height))
    frames.append(_to_indexed(frame))
  # optimize=False keeps the fixed palette instead of a per-file reduced one.
  frames[0].save(path, save_all=True, append_images=frames[1:],
                 duration=frame_ms, loop=0, optimize=False)
