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
                        zoom: int = 4) -> Image.Image:
  """Rows of (input with boxes, reconstruction) pairs.

  Args:
    images: `[num, H, W]` in [0, 1].
    reconstructions: `[num, H, W]`.
    boxes: `[num, N, 4]`.
    presence: `[num, N]`.
    zoom: integer upscaling.
  """
  num, height, width = images.shape
  cols = min(num, 8)
  rows = 2 * ((num + cols - 1) // cols)
  tile_h, tile_w = height * zoom + 2, width * zoom + 2
  grid = Image.new("RGB", (cols * tile_w, rows * tile_h), (40, 40, 40))
  for i in range(num):
    r, c = 2 * (i // cols), i % cols
    grid.paste(draw_boxes(images[i], boxes[i], presence[i], zoom=zoom),
               (c * tile_w, r * tile_h))
    grid.paste(_to_rgb(reconstructions[i], zoom), (c * tile_w, (r + 1) * tile_h))
  return grid


def save_reconstructions(path: str, images, reconstructions, boxes, presence,
                         zoom: int = 4) -> None:
  """Writes `reconstruction_grid(...)` as a PNG."""
  reconstruction_grid(np.asarray(images), np.asarray(reconstructions),
                      np.asarray(boxes), np.asarray(presence), zoom).save(path)
