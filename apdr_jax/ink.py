"""The ink anchor: where APDR's propagation looks for each tracked object.

Before q looks, each object's anchor (`apdr.propagate`) is moved onto its
ink: mean-shift steps of position, then Levenberg-Marquardt steps of scale
and position, each against the frame with the *other* objects' drawings
taken out, inside a window around the object's box (`APDRConfig.ink_*`).

Every quantity of a step is zero outside the object's window, so a step
can be computed on a crop of the frame around each object instead of the
whole canvas. `ink_anchor` does so whenever every window fits in its crop
(a `lax.cond` on the batch; otherwise the whole canvas), so the result is
the same either way up to the order of floating-point sums: the crop is a
speed-up, not an approximation (test: `test_ink_anchor_crop_*`).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from apdr_jax import air
from apdr_jax import glimpse


def ink_centroid(images: jax.Array, row_centres: jax.Array | None = None,
                 col_centres: jax.Array | None = None):
  """The intensity-weighted mean position, in normalised image coordinates.

  Args:
    images: `[..., H, W]` non-negative intensities (rows are `y`).
    row_centres: `[..., H]` (or `[H]`) coordinates of the rows' pixel
      centres; the whole image's by default.
    col_centres: `[..., W]` likewise for the columns.

  Returns:
    `(centroid [..., 2] as (x, y), mass [...])`; the centroid is 0 where the
    mass is below 1e-3.
  """
  height, width = images.shape[-2:]
  rows = glimpse.pixel_centres(height) if row_centres is None else row_centres
  cols = glimpse.pixel_centres(width) if col_centres is None else col_centres
  mass = images.sum((-2, -1))
  safe = jnp.maximum(mass, 1e-3)
  x = (images.sum(-2) * cols).sum(-1) / safe
  y = (images.sum(-1) * rows).sum(-1) / safe
  centroid = jnp.stack([x, y], -1)
  return jnp.where(mass[..., None] > 1e-3, centroid, 0.0), mass


class Frame(NamedTuple):
  """What each object's step reads: the whole canvas or a crop around it.

  Attributes:
    image: `[B, 1, H, W]` (whole canvas) or `[B, N, C, C]` (crops).
    rows: the pixel centres' `y`, `[H]` or `[B, N, C]`.
    cols: the pixel centres' `x`, `[W]` or `[B, N, C]`.
  """
  image: jax.Array
  rows: jax.Array
  cols: jax.Array


def crop_size(config) -> int:
  """The crop side in pixels that holds the window of any object whose scale
  is at least 4 prior standard deviations below the prior's mean, plus
  slack; 0 (the whole canvas) when that is not smaller than the canvas."""
  a = config.air
  smallest_scale = a.scale_prior_mean - 4.0 * a.scale_prior_std
  if smallest_scale <= 0:
    return 0
  size = math.ceil(config.ink_window * a.canvas_size / smallest_scale) + 4
  return size if size < a.canvas_size else 0


def _window(z_where: jax.Array, size: float, rows: jax.Array,
            cols: jax.Array) -> jax.Array:
  """`[..., P, Q]`: 1 at the pixels inside the box of `z_where` widened
  `size` times."""
  half = size / z_where[..., 0:1]
  inside = lambda centres, c: (jnp.abs(centres - c) <= half).astype(
      z_where.dtype)
  return (inside(rows, z_where[..., 2:3])[..., :, None] *
          inside(cols, z_where[..., 1:2])[..., None, :])


def _whole_frame(image: jax.Array) -> Frame:
  height, width = image.shape[-2:]
  return Frame(image[:, None], glimpse.pixel_centres(height),
               glimpse.pixel_centres(width))


def _crop_start(centre, scale, window: float, size: int, length: int):
  """First pixel of a crop of `size` along an axis of `length`, and whether
  the window (with a pixel of slack each side) lies inside it."""
  half = window / scale * length / 2.0  # pixels
  middle = ((centre + 1.0) * length - 1.0) / 2.0  # pixel index
  low = jnp.floor(middle - half) - 1.0
  high = jnp.ceil(middle + half) + 1.0
  start = jnp.clip(low, 0, length - size)
  fits = jnp.minimum(high, length - 1) <= start + size - 1
  return start.astype(jnp.int32), fits


def _crop_frame(image: jax.Array, anchor: jax.Array, window: float,
                size: int):
  """`(Frame of [B, N, size, size] crops, whether every window fits)`."""
  height, width = image.shape[-2:]
  scale = anchor[..., 0]
  row_start, rows_fit = _crop_start(anchor[..., 2], scale, window, size,
                                    height)
  col_start, cols_fit = _crop_start(anchor[..., 1], scale, window, size,
                                    width)
  cut = lambda img, r, c: jax.lax.dynamic_slice(img, (r, c), (size, size))
  crops = jax.vmap(jax.vmap(cut, in_axes=(None, 0, 0)))(image, row_start,
                                                         col_start)
  # The same arithmetic as `glimpse.pixel_centres`, on the crop's indices.
  centres = lambda start, length: (2.0 * (start[..., None] + jnp.arange(
      size)).astype(jnp.float32) + 1.0) / length - 1.0
  frame = Frame(crops, centres(row_start, height), centres(col_start, width))
  return frame, jnp.all(rows_fit & cols_fit)


def _own_drawing(config, templates, presence, frame: Frame, where):
  """`[B, N, P, Q]`: each object drawn at `where` in its own frame."""
  batch, n = presence.shape
  height, width = frame.image.shape[-2:]
  flat = lambda x, size: jnp.broadcast_to(x, (batch, n, size)).reshape(
      batch * n, size)
  drawn = glimpse.render_at(
      templates.reshape((batch * n,) + templates.shape[2:]),
      where.reshape(batch * n, 3), flat(frame.rows, height),
      flat(frame.cols, width), config.air.render_method)
  return drawn.reshape(batch, n, height, width) * presence[..., None, None]


def _draw(config, templates, presence, frame: Frame, anchor):
  """`(own [B, N, P, Q], total [B, N or 1, P, Q])`: each object's drawing
  and the sum of all objects' drawings, in each object's frame."""
  if frame.rows.ndim == 1:  # the whole canvas: one drawing per object
    own = _own_drawing(config, templates, presence, frame, anchor)
    return own, own.sum(1, keepdims=True)
  # Crops: object j drawn in object i's crop, [B, N (i), N (j), C, C].
  batch, n = presence.shape
  size = frame.rows.shape[-1]
  pairs = lambda x, axis: jnp.broadcast_to(
      jnp.expand_dims(x, axis), (batch, n, n) + x.shape[2:]).reshape(
          (batch * n * n,) + x.shape[2:])
  drawn = glimpse.render_at(pairs(templates, 1), pairs(anchor, 1),
                            pairs(frame.rows, 2), pairs(frame.cols, 2),
                            config.air.render_method)
  drawn = drawn.reshape(batch, n, n, size, size)
  drawn = drawn * presence[:, None, :, None, None]
  own = drawn[:, jnp.arange(n), jnp.arange(n)]
  return own, drawn.sum(2)


def _own_jacobian(config, templates, presence, frame: Frame, anchor):
  """`[3, B, N, P, Q]`: d (object i's drawing) / d (s, x, y) of object i."""
  own = lambda where: _own_drawing(config, templates, presence, frame, where)
  basis = jnp.eye(3, dtype=anchor.dtype)
  return jax.vmap(lambda tangent: jax.jvp(own, (anchor,), (jnp.broadcast_to(
      tangent, anchor.shape),))[1])(basis)


def _centroid_step(config, templates, presence, frame: Frame, anchor):
  """Moves each anchor by the distance from its drawing's centroid to the
  centroid of its own ink in the widened box around it (position only)."""
  own, total = _draw(config, templates, presence, frame, anchor)
  window = _window(anchor, config.ink_window, frame.rows, frame.cols)
  own_ink = jnp.clip(frame.image - (total - own), 0.0, 1.0) * window
  ink_centre, ink_mass = ink_centroid(own_ink, frame.rows, frame.cols)
  drawn_centre, drawn_mass = ink_centroid(own * window, frame.rows,
                                          frame.cols)
  found = (ink_mass > 1e-3) & (drawn_mass > 1e-3)
  shift = jnp.where(found[..., None], ink_centre - drawn_centre, 0.0)
  return anchor.at[..., 1:].add(shift)


def _fit_step(config, templates, presence, frame: Frame, anchor,
              damping=0.1):
  """One Levenberg-Marquardt step of each anchor's `(s, x, y)` on the squared
  error between the object's drawing and its own ink in the widened box (the
  Gaussian likelihood of that object alone, the others held where they
  are; under `canvas='clip'`, of the clipped composite of all of them).
  Steps are clipped to 10% of the scale and 0.1 (2.5 px at 50x50) of
  position."""
  own, total = _draw(config, templates, presence, frame, anchor)
  jacobian = _own_jacobian(config, templates, presence, frame, anchor)
  window = _window(anchor, config.ink_window, frame.rows, frame.cols)
  own_ink = jnp.clip(frame.image - (total - own), 0.0, 1.0) * window
  if config.air.canvas == "clip":
    # The frame's error with the others held: image - min(others + own, 1).
    # Where the composite saturates, moving this object changes nothing, so
    # ink shared with another object neither pulls nor pushes it.
    residual = (frame.image - air.composite(config.air, total)) * window
    window = window * (total < 1.0)
  else:
    residual = own_ink - own * window
  jacobian = jacobian * window
  # The 3x3 normal equations as six pixel sums: as a batched matrix product
  # ("bnkhw,bnlhw->bnkl") XLA:CPU spent 5 times longer on them (profiled).
  pixel_sum = lambda x: x.sum((-2, -1))
  normal = jnp.stack([jnp.stack([pixel_sum(jacobian[k] * jacobian[l])
                                 for l in range(3)], -1) for k in range(3)],
                     -2)
  gradient = jnp.stack([pixel_sum(jacobian[k] * residual) for k in range(3)],
                       -1)
  diagonal = jnp.diagonal(normal, axis1=-2, axis2=-1)
  normal = normal + (damping * diagonal + 1e-6)[..., None] * jnp.eye(3)
  step = jnp.linalg.solve(normal, gradient[..., None])[..., 0]
  limit = jnp.concatenate([0.1 * anchor[..., :1],
                           jnp.full_like(anchor[..., 1:], 0.1)], -1)
  step = jnp.clip(step, -limit, limit)
  found = ((own_ink.sum((-2, -1)) > 1e-3) & (diagonal.sum(-1) > 1e-6))
  return anchor + jnp.where(found[..., None], step, 0.0)


def ink_anchor(config, params, image: jax.Array, prev, anchor: jax.Array,
               crop: int | None = None) -> jax.Array:
  """Moves each object's anchor onto its ink before q looks.

  The object's decoded glimpse (from its previous `z_what`) is its template.
  `config.ink_tracking_steps` mean-shift steps move the position by the
  distance between the centroid of the template drawn at the anchor and the
  centroid of the frame's ink around it (the other objects' drawings taken
  out); `config.ink_fit_steps` Levenberg-Marquardt steps then fit scale and
  position to that ink by least squares. Moments and residuals are taken in
  the image (resampling a window first biased them, measured).

  Args:
    config: `apdr.APDRConfig`.
    params: `APDRNetworks` parameters (the decoder draws each object).
    image: `[batch, H, W]`, the frame.
    prev: the previous frame's `apdr.Objects` (`[batch, N, ...]`, cleaned).
    anchor: `[batch, N, 3]`, where q would otherwise look.
    crop: the side of the crop each step reads around each object (0: the
      whole canvas); `crop_size(config)` by default. A step whose windows do
      not all fit reads the whole canvas.

  Returns:
    `[batch, N, 3]`, the moved anchors. An anchor whose window holds no ink
    (or whose template is empty) stays.
  """
  if config.ink_tracking_steps == 0 and config.ink_fit_steps == 0:
    return anchor
  templates = air.decode(config.air, params["air"], prev.z_what)
  size = crop_size(config) if crop is None else crop
  if size >= min(image.shape[-2:]):
    size = 0

  def step(kind, anchor):
    whole = lambda a: kind(config, templates, prev.presence,
                           _whole_frame(image), a)
    if not size:
      return whole(anchor)
    frame, fits = _crop_frame(image, anchor, config.ink_window, size)
    cropped = lambda a: kind(config, templates, prev.presence, frame, a)
    return jax.lax.cond(fits, cropped, whole, anchor)

  for _ in range(config.ink_tracking_steps):
    anchor = step(_centroid_step, anchor)
  for _ in range(config.ink_fit_steps):
    anchor = step(_fit_step, anchor)
  return anchor
