"""Glimpse extraction and rendering: pure, batched, differentiable.

Coordinates. An image of `H x W` pixels spans the normalised square `[-1, 1]^2`
(pixel centres at `(2p + 1) / W - 1`, the `align_corners=False` convention). A
glimpse of `g x g` pixels spans its own `[-1, 1]^2`. `z_where = (s, x, y)` places a
glimpse centred at `(x, y)` of the image with half-width `1 / s`:

    image_coord = glimpse_coord / s + (x, y)
    glimpse_coord = s * (image_coord - (x, y))

so `s` is an inverse scale (larger `s`, smaller object) and `s = 1, x = y = 0`
maps the glimpse onto the whole image. Sampling is bilinear with zeros outside.

Because the transform has no rotation or shear it is separable: each output row
coordinate depends on one input row coordinate only. So both directions can be
written as two small matrix products `A_y @ image @ A_x^T` (the "separable"
formulation), or as a gather of four neighbours per output pixel
(`jax.scipy.ndimage.map_coordinates`, the "gather" formulation). `launch.benchmark
--glimpse` measures both; the defaults below are the faster on CPU for each
direction (see WORKSPACE.md for the figures).
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp

Method = Literal["separable", "gather"]


def pixel_centres(size: int) -> jax.Array:
  """Normalised coordinates of the pixel centres of an axis, `[size]`."""
  return (2.0 * jnp.arange(size, dtype=jnp.float32) + 1.0) / size - 1.0


def _to_pixel_index(coord: jax.Array, size: int) -> jax.Array:
  """Maps normalised coordinates to (fractional) pixel indices of an axis."""
  return ((coord + 1.0) * size - 1.0) / 2.0


def _interpolation_matrix(positions: jax.Array, size: int) -> jax.Array:
  """Linear-interpolation weights with zero padding.

  Args:
    positions: fractional pixel indices to sample at, `[..., out]`.
    size: number of source pixels along the axis.

  Returns:
    `[..., out, size]` weights `max(0, 1 - |position - k|)`; a row sums to 1
    inside the source and falls to 0 outside it.
  """
  return _tent(positions[..., None] - jnp.arange(size, dtype=positions.dtype))


def _glimpse_sample_positions(z_where: jax.Array, glimpse_size: int,
                              height: int, width: int):
  """Pixel indices in the image at which each glimpse pixel is sampled.

  Returns:
    (rows `[..., g]`, cols `[..., g]`).
  """
  scale, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
  centres = pixel_centres(glimpse_size)
  rows = _to_pixel_index(centres / scale + y, height)
  cols = _to_pixel_index(centres / scale + x, width)
  return rows, cols


def _resample(sources: jax.Array, rows: jax.Array, cols: jax.Array,
              method: Method) -> jax.Array:
  """Bilinear samples of each source on the grid `rows x cols` (zero padded).

  Args:
    sources: `[batch, h, w]`.
    rows: `[batch, out_h]` fractional row indices into `sources`.
    cols: `[batch, out_w]` fractional column indices.
    method: "separable" (two matmuls) or "gather" (four-neighbour gather).

  Returns:
    `[batch, out_h, out_w]`.
  """
  height, width = sources.shape[-2:]
  if method == "separable":
    a_rows = _interpolation_matrix(rows, height)  # [b, out_h, h]
    a_cols = _interpolation_matrix(cols, width)  # [b, out_w, w]
    return jnp.einsum("bih,bhw,bjw->bij", a_rows, sources, a_cols)
  if method == "gather":
    shape = rows.shape + cols.shape[-1:]
    grid_rows = jnp.broadcast_to(rows[:, :, None], shape)
    grid_cols = jnp.broadcast_to(cols[:, None, :], shape)
    sample = lambda source, r, c: jax.scipy.ndimage.map_coordinates(
        source, [r, c], order=1, mode="constant", cval=0.0)
    return jax.vmap(sample)(sources, grid_rows, grid_cols)
  raise ValueError(f"unknown glimpse method {method!r}")


def extract(images: jax.Array, z_where: jax.Array, glimpse_size: int,
            method: Method = "gather") -> jax.Array:
  """Extracts one glimpse per `z_where` from its image.

  Args:
    images: `[batch, H, W]`.
    z_where: `[batch, 3]` as `(s, x, y)`.
    glimpse_size: `g`, the glimpse side in pixels.
    method: "gather" (four-neighbour gather) or "separable" (two matmuls).

  Returns:
    `[batch, g, g]` glimpses.
  """
  height, width = images.shape[-2:]
  rows, cols = _glimpse_sample_positions(z_where, glimpse_size, height, width)
  return _resample(images, rows, cols, method)


def _render_matrices(z_where: jax.Array, glimpse_size: int, height: int,
                     width: int):
  """Glimpse-pixel indices sampled by each canvas row and column.

  Returns:
    (rows `[..., H]`, cols `[..., W]`), fractional glimpse pixel indices.
  """
  scale, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
  rows = _to_pixel_index(scale * (pixel_centres(height) - y), glimpse_size)
  cols = _to_pixel_index(scale * (pixel_centres(width) - x), glimpse_size)
  return rows, cols


def render(glimpses: jax.Array, z_where: jax.Array, height: int, width: int,
           method: Method = "separable") -> jax.Array:
  """Renders glimpses into an image-sized canvas with the inverse transform.

  Args:
    glimpses: `[batch, g, g]`.
    z_where: `[batch, 3]` as `(s, x, y)`.
    height: canvas height `H`.
    width: canvas width `W`.
    method: "separable" (two matmuls) or "gather".

  Returns:
    `[batch, H, W]`, zero outside each glimpse's box.
  """
  glimpse_size = glimpses.shape[-1]
  rows, cols = _render_matrices(z_where, glimpse_size, height, width)
  return _resample(glimpses, rows, cols, method)


def render_at(glimpses: jax.Array, z_where: jax.Array, row_centres: jax.Array,
              col_centres: jax.Array, method: Method = "separable") -> jax.Array:
  """`render` onto given pixel centres (a window of the canvas, say).

  Args:
    glimpses: `[batch, g, g]`.
    z_where: `[batch, 3]` as `(s, x, y)`.
    row_centres: `[batch, P]`, the `y` of each output row's pixel centre in
      the canvas's normalised coordinates (`pixel_centres(H)[r0:r0 + P]` for
      rows `r0...` of an `H`-row canvas).
    col_centres: `[batch, Q]`, the `x` of each output column.
    method: "separable" or "gather".

  Returns:
    `[batch, P, Q]`: the same values as the corresponding pixels of
    `render(glimpses, z_where, H, W, method)`.
  """
  size = glimpses.shape[-1]
  scale, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
  rows = _to_pixel_index(scale * (row_centres - y), size)
  cols = _to_pixel_index(scale * (col_centres - x), size)
  return _resample(glimpses, rows, cols, method)


def render_sum(glimpses: jax.Array, z_where: jax.Array, weights: jax.Array,
               height: int, width: int) -> jax.Array:
  """Renders every slot's glimpse and sums them, weighted, into one canvas.

  Same result as `(weights * render(...)).sum(slots)` (separable), computed as
  two batched matmuls with the sum over slots folded into the second:

      canvas[b] = A_rows[b] @ (G[b] @ A_cols[b]^T)   with A_rows `[H, N*g]`.

  Its gradient is written out (`_render_sum_bwd`) so that every matmul of the
  backward pass has its operands in row-major order: the interpolation
  matrices are cheap to build, so the backward builds their transposes
  directly instead of letting XLA emit transposed-operand matmuls, which its
  CPU backend runs several times slower (measured in WORKSPACE.md).

  Args:
    glimpses: `[batch, N, g, g]`.
    z_where: `[batch, N, 3]`.
    weights: `[batch, N]` (the presence mask).
    height: canvas height `H`.
    width: canvas width `W`.

  Returns:
    `[batch, H, W]`.
  """
  return _render_sum(glimpses, z_where, weights, height, width)


def _tent(offsets: jax.Array) -> jax.Array:
  """Linear-interpolation weight `max(0, 1 - |offset|)`."""
  return jax.nn.relu(1.0 - jnp.abs(offsets))


def _tent_grad(offsets: jax.Array) -> jax.Array:
  """d tent / d offset, with autodiff's conventions at the kinks (0 there)."""
  return jnp.where(jnp.abs(offsets) < 1.0, -jnp.sign(offsets), 0.0)


def _offsets(positions: jax.Array, size: int, source_last: bool) -> jax.Array:
  """Offsets `position - k` of each sample from every source pixel `k`.

  Args:
    positions: `[b, N, P]` fractional source indices.
    size: the number of source pixels.
    source_last: the layout, `[b, N, P, size]` if True else `[b, N, size, P]`;
      built directly in the layout a matmul consumes, so no transpose.
  """
  source = jnp.arange(size, dtype=positions.dtype)
  if source_last:
    return positions[..., None] - source
  return positions[:, :, None, :] - source[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _render_sum(glimpses, z_where, weights, height, width):
  return _render_sum_fwd(glimpses, z_where, weights, height, width)[0]


def _render_sum_fwd(glimpses, z_where, weights, height, width):
  batch, slots, size = glimpses.shape[:3]
  rows, cols = _render_matrices(z_where, size, height, width)  # [b, N, H|W]
  # Row weights as `[b, H, N, g]`, so that the slots fold into the matmul.
  row_offsets = jnp.swapaxes(rows, 1, 2)[..., None] - jnp.arange(
      size, dtype=rows.dtype)
  a_rows = _tent(row_offsets) * weights[:, None, :, None]
  a_cols_t = _tent(_offsets(cols, size, source_last=False))  # [b, N, g, W]
  columns_done = jnp.matmul(glimpses, a_cols_t)  # [b, N, g, W]
  canvas = jnp.matmul(a_rows.reshape(batch, height, slots * size),
                      columns_done.reshape(batch, slots * size, width))
  return canvas, (glimpses, z_where, weights, columns_done)


def _render_sum_bwd(height, width, residuals, d_canvas):
  glimpses, z_where, weights, columns_done = residuals
  batch, slots, size = glimpses.shape[:3]
  rows, cols = _render_matrices(z_where, size, height, width)
  # canvas = A_rows @ columns_done: gradients of both factors.
  row_offsets_t = _offsets(rows, size, source_last=False)  # [b, N, g, H]
  a_rows_t = _tent(row_offsets_t) * weights[..., None, None]
  d_columns_done = jnp.matmul(a_rows_t, d_canvas[:, None])  # [b, N, g, W]
  d_a_rows_t = jnp.matmul(  # [b, N, g, H]: columns_done @ d_canvas^T
      columns_done, jnp.swapaxes(d_canvas, 1, 2)[:, None])
  d_rows = (d_a_rows_t * weights[..., None, None] *
            _tent_grad(row_offsets_t)).sum(2)
  d_weights = (d_a_rows_t * _tent(row_offsets_t)).sum((2, 3))
  # columns_done = G @ A_cols^T: gradients of both factors.
  col_offsets = _offsets(cols, size, source_last=True)  # [b, N, W, g]
  d_glimpses = jnp.matmul(d_columns_done, _tent(col_offsets))
  # [b, N, W, g] = d_columns_done^T @ G, with the transpose materialised: the
  # barrier keeps XLA from folding it into a transposed-operand matmul.
  d_a_cols = jnp.matmul(jax.lax.optimization_barrier(
      jnp.swapaxes(d_columns_done, 2, 3)), glimpses)
  d_cols = (d_a_cols * _tent_grad(col_offsets)).sum(3)
  # Positions -> z_where, through the (tiny) position computation.
  _, positions_vjp = jax.vjp(
      lambda zw: _render_matrices(zw, size, height, width), z_where)
  d_z_where, = positions_vjp((d_rows, d_cols))
  return d_glimpses, d_z_where, d_weights


_render_sum.defvjp(_render_sum_fwd, _render_sum_bwd)


def box_corners(z_where: jax.Array, height: int, width: int) -> jax.Array:
  """The pixel box that a glimpse covers, for drawing and tracking metrics.

  Args:
    z_where: `[..., 3]` as `(s, x, y)`.
    height: image height.
    width: image width.

  Returns:
    `[..., 4]` as `(x_min, y_min, x_max, y_max)` in pixel units (edges, so a
    full-image glimpse is `(0, 0, W, H)`).
  """
  scale, x, y = z_where[..., 0], z_where[..., 1], z_where[..., 2]
  half = 1.0 / scale
  to_px = lambda c, size: (c + 1.0) * size / 2.0
  return jnp.stack([to_px(x - half, width), to_px(y - half, height),
                    to_px(x + half, width), to_px(y + half, height)], axis=-1)
