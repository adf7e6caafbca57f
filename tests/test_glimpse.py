"""Tests of apdr_jax.glimpse: extraction, rendering and their gradients.

Conventions under test (see the module docstring of `apdr_jax.glimpse`): an
image spans `[-1, 1]^2` with pixel centres at `(2p + 1) / size - 1`
(`align_corners=False`), `z_where = (s, x, y)`, `image_coord = glimpse_coord /
s + (x, y)` with `x` along columns and `y` along rows, and bilinear sampling
with zeros outside.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apdr_jax import glimpse

METHODS = ("gather", "separable")

# Jitted once per shape: much cheaper than eager dispatch of every small op.
_extract = jax.jit(glimpse.extract, static_argnums=(2, 3))
_render = jax.jit(glimpse.render, static_argnums=(2, 3, 4))
_render_sum = jax.jit(glimpse.render_sum, static_argnums=(3, 4))


# ------------------------------------------------------ numpy reference sampler


def _np_centre(p, size):
  """Normalised coordinate of (fractional) pixel index `p` on an axis."""
  return (2.0 * p + 1.0) / size - 1.0


def _np_index(coord, size):
  """Fractional pixel index of normalised coordinate `coord` on an axis."""
  return ((coord + 1.0) * size - 1.0) / 2.0


def _np_bilinear(image, row, col):
  """Bilinear sample of a 2-D array at a fractional (row, col), zero padded."""
  height, width = image.shape
  r0, c0 = int(np.floor(row)), int(np.floor(col))
  value = 0.0
  for r in (r0, r0 + 1):
    for c in (c0, c0 + 1):
      if 0 <= r < height and 0 <= c < width:
        weight = (1.0 - abs(row - r)) * (1.0 - abs(col - c))
        value += weight * float(image[r, c])
  return value


def _np_extract(images, z_where, glimpse_size):
  """Per-pixel loop reference for `glimpse.extract`."""
  batch, height, width = images.shape
  out = np.zeros((batch, glimpse_size, glimpse_size))
  for b in range(batch):
    s, x, y = (float(v) for v in z_where[b])
    for i in range(glimpse_size):
      v = _np_centre(i, glimpse_size) / s + y
      for j in range(glimpse_size):
        u = _np_centre(j, glimpse_size) / s + x
        out[b, i, j] = _np_bilinear(images[b], _np_index(v, height),
                                    _np_index(u, width))
  return out


def _np_render(glimpses, z_where, height, width):
  """Per-pixel loop reference for `glimpse.render`."""
  batch, glimpse_size = glimpses.shape[:2]
  out = np.zeros((batch, height, width))
  for b in range(batch):
    s, x, y = (float(v) for v in z_where[b])
    for r in range(height):
      gy = s * (_np_centre(r, height) - y)
      for c in range(width):
        gx = s * (_np_centre(c, width) - x)
        out[b, r, c] = _np_bilinear(glimpses[b], _np_index(gy, glimpse_size),
                                    _np_index(gx, glimpse_size))
  return out


def _extract_positions(z_where, glimpse_size, height, width):
  """All fractional image indices that `extract` samples at, flattened."""
  s, x, y = (np.asarray(z_where, np.float64)[:, k:k + 1] for k in range(3))
  centres = _np_centre(np.arange(glimpse_size), glimpse_size)
  rows = _np_index(centres / s + y, height)
  cols = _np_index(centres / s + x, width)
  return np.concatenate([rows.ravel(), cols.ravel()])


def _render_positions(z_where, glimpse_size, height, width):
  """All fractional glimpse indices that `render` samples at, flattened."""
  s, x, y = (np.asarray(z_where, np.float64)[..., k:k + 1] for k in range(3))
  rows = _np_index(s * (_np_centre(np.arange(height), height) - y),
                   glimpse_size)
  cols = _np_index(s * (_np_centre(np.arange(width), width) - x),
                   glimpse_size)
  return np.concatenate([rows.ravel(), cols.ravel()])


def _assert_off_kinks(positions, margin=1e-3):
  """Bilinear sampling is only piecewise linear: stay away from the kinks."""
  distance = np.abs(positions - np.round(positions))
  assert distance.min() > margin, "a sample lies on a pixel centre; reseed"


# ---------------------------------------------------------------- helpers


def _random_z_where(rng, batch, s_range=(1.0, 4.0), shift=1.0):
  """`[batch, 3]` random `(s, x, y)`, float32."""
  s = rng.uniform(*s_range, size=batch)
  xy = rng.uniform(-shift, shift, size=(batch, 2))
  return np.concatenate([s[:, None], xy], axis=-1).astype(np.float32)


def _inside_z_where(rng, batch, s_range):
  """Random `(s, x, y)` whose box lies inside the canvas."""
  s = rng.uniform(*s_range, size=batch)
  limit = 1.0 - 1.0 / s
  x = rng.uniform(-1.0, 1.0, size=batch) * limit
  y = rng.uniform(-1.0, 1.0, size=batch) * limit
  return np.stack([s, x, y], axis=-1).astype(np.float32)


def _blob(size, centre=(8.0, 11.0), sigma=(3.0, 3.0)):
  """An off-centre, smooth Gaussian blob that is ~0 at the glimpse border."""
  r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  return np.exp(-((r - centre[0]) ** 2 / (2 * sigma[0] ** 2) +
                  (c - centre[1]) ** 2 / (2 * sigma[1] ** 2)))


def _central_difference_grad(fn, arg, eps=1e-6):
  """Central-difference gradient of scalar `fn` wrt every element of `arg`."""
  arg = np.asarray(arg, np.float64)
  grad = np.zeros_like(arg)
  for index in np.ndindex(arg.shape):
    step = np.zeros_like(arg)
    step[index] = eps
    grad[index] = (float(fn(arg + step)) - float(fn(arg - step))) / (2 * eps)
  return grad


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize("method", METHODS)
def test_identity_extract_and_render(method):
  rng = np.random.default_rng(0)
  size = 12
  images = rng.uniform(size=(3, size, size)).astype(np.float32)
  z_where = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (3, 1))
  extracted = _extract(images, z_where, size, method)
  chex.assert_shape(extracted, (3, size, size))
  chex.assert_trees_all_close(extracted, images, atol=1e-6)
  rendered = _render(images, z_where, size, size, method)
  chex.assert_shape(rendered, (3, size, size))
  chex.assert_trees_all_close(rendered, images, atol=1e-6)


def test_unknown_method_raises():
  images = jnp.zeros((1, 4, 4))
  z_where = jnp.array([[1.0, 0.0, 0.0]])
  with pytest.raises(ValueError):
    glimpse.extract(images, z_where, 4, "bicubic")
  with pytest.raises(ValueError):
    glimpse.render(images, z_where, 4, 4, "bicubic")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_pixel_aligned(method):
  """With s = 2 and g = H / 2 glimpse and canvas pixels coincide: exact."""
  rng = np.random.default_rng(1)
  height, size = 40, 20
  # Box half-width 1/s = 0.5 and whole-pixel shifts 2k/H with |k| <= 10 keep
  # the box inside the canvas.
  ks = np.array([[0, 0], [10, -10], [-10, 10], [3, -7], [-5, 2], [7, 7]])
  shifts = 2.0 * ks / height
  z_where = np.concatenate([np.full((len(ks), 1), 2.0), shifts],
                           axis=-1).astype(np.float32)
  glimpses = rng.uniform(size=(len(ks), size, size)).astype(np.float32)
  canvas = _render(glimpses, z_where, height, height, method)
  # The rendered box is exactly the glimpse, placed at the shifted pixels.
  for b, (kx, ky) in enumerate(ks):
    top, left = 10 + ky, 10 + kx
    np.testing.assert_allclose(
        canvas[b, top:top + size, left:left + size], glimpses[b], atol=1e-5)
    np.testing.assert_allclose(float(np.abs(canvas[b]).sum()),
                               float(glimpses[b].sum()), rtol=1e-5)
  back = _extract(canvas, z_where, size, method)
  chex.assert_trees_all_close(back, glimpses, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_full_canvas(method):
  rng = np.random.default_rng(2)
  size = 16
  glimpses = rng.uniform(size=(2, size, size)).astype(np.float32)
  z_where = np.array([[1.0, 0.0, 0.0]] * 2, np.float32)
  canvas = _render(glimpses, z_where, size, size, method)
  back = _extract(canvas, z_where, size, method)
  chex.assert_trees_all_close(back, glimpses, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_smooth_glimpse_random_boxes(method):
  """Non-aligned boxes: two bilinear resamplings of a smooth blob.

  The correct transform leaves a max error of ~0.045 here; a render with x and
  y swapped or with the sign of the shift flipped gives errors of ~1, a half-
  pixel offset or a 10% scale error ~0.11 (checked by mutating the module).
  """
  rng = np.random.default_rng(3)
  batch, height, size = 16, 40, 20
  z_where = _inside_z_where(rng, batch, (1.0, 2.0))
  glimpses = np.broadcast_to(_blob(size), (batch, size, size)).astype(
      np.float32)
  canvas = _render(glimpses, z_where, height, height, method)
  back = np.asarray(_extract(canvas, z_where, size, method))
  np.testing.assert_allclose(back, glimpses, atol=0.06)
  relative = np.sqrt(((back - glimpses) ** 2).sum((1, 2)) /
                     (glimpses ** 2).sum((1, 2)))
  assert relative.max() < 0.05, relative


# ------------------------------------------------------ numpy reference match


@pytest.mark.parametrize("method", METHODS)
def test_extract_matches_numpy_reference(method):
  rng = np.random.default_rng(4)
  batch, height, width, size = 6, 12, 16, 7
  images = rng.uniform(size=(batch, height, width)).astype(np.float32)
  z_where = _random_z_where(rng, batch)
  expected = _np_extract(images, z_where, size)
  actual = _extract(images, z_where, size, method)
  chex.assert_shape(actual, (batch, size, size))
  np.testing.assert_allclose(actual, expected, atol=1e-5)
  # The images are positive, so zeros come from sampling outside them: the
  # random boxes exercise the zero padding.
  assert (expected == 0.0).any() and (expected > 0.0).any()


@pytest.mark.parametrize("method", METHODS)
def test_render_matches_numpy_reference(method):
  rng = np.random.default_rng(5)
  batch, height, width, size = 6, 12, 16, 7
  glimpses = rng.uniform(size=(batch, size, size)).astype(np.float32)
  z_where = _random_z_where(rng, batch)
  expected = _np_render(glimpses, z_where, height, width)
  actual = _render(glimpses, z_where, height, width, method)
  chex.assert_shape(actual, (batch, height, width))
  np.testing.assert_allclose(actual, expected, atol=1e-5)


# ----------------------------------------------------------------- orientation


@pytest.mark.parametrize("method", METHODS)
def test_extract_orientation(method):
  height, width, size = 20, 24, 10
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  right_half = (cols >= width // 2).astype(np.float32)
  lower_half = (rows >= height // 2).astype(np.float32)
  images = np.stack([right_half, right_half, lower_half, lower_half])
  z_where = np.array([[2.0, 0.5, 0.0], [2.0, -0.5, 0.0],
                      [2.0, 0.0, 0.5], [2.0, 0.0, -0.5]], np.float32)
  out = np.asarray(_extract(images, z_where, size, method))
  # x > 0 looks at the right half (high columns), y > 0 at the lower rows.
  np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[1], 0.0, atol=1e-6)
  np.testing.assert_allclose(out[2], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[3], 0.0, atol=1e-6)
  # And within the glimpse, columns and rows keep their order.
  col_ramp = np.broadcast_to(np.arange(width, dtype=np.float32),
                             (height, width))
  ramp_out = np.asarray(_extract(
      col_ramp[None], np.array([[2.0, 0.5, 0.0]], np.float32), size,
      method))[0]
  assert ramp_out.min() >= width / 2 - 0.5 - 1e-5
  assert np.all(np.diff(ramp_out, axis=1) > 0)
  np.testing.assert_allclose(np.diff(ramp_out, axis=0), 0.0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_render_orientation(method):
  # g = W / s: glimpse columns align with canvas columns, so no ink bleeds
  # across the box edge.
  height, width, size = 20, 24, 12
  ones = np.ones((4, size, size), np.float32)
  z_where = np.array([[2.0, 0.5, 0.0], [2.0, -0.5, 0.0],
                      [2.0, 0.0, 0.5], [2.0, 0.0, -0.5]], np.float32)
  canvas = np.asarray(_render(ones, z_where, height, width, method))
  ink_rows = [np.nonzero(c.max(1) > 1e-4)[0] for c in canvas]
  ink_cols = [np.nonzero(c.max(0) > 1e-4)[0] for c in canvas]
  assert ink_cols[0].min() >= width // 2
  assert ink_cols[1].max() < width // 2
  assert ink_rows[2].min() >= height // 2
  assert ink_rows[3].max() < height // 2
  # A shift along one axis does not move ink along the other.
  np.testing.assert_array_equal(ink_rows[0], ink_rows[1])
  np.testing.assert_array_equal(ink_cols[2], ink_cols[3])
  assert ink_rows[0].min() > 0 and ink_rows[0].max() < height - 1


# ------------------------------------------------------------------ gradients


@pytest.fixture
def x64():
  """Runs a test in float64, restoring the previous setting afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("method", METHODS)
def test_extract_grad_wrt_z_where(method, x64):
  del x64
  rng = np.random.default_rng(6)
  batch, height, width, size = 2, 9, 11, 5
  images = jnp.asarray(rng.uniform(size=(batch, height, width)))
  probe = jnp.asarray(rng.normal(size=(batch, size, size)))
  z_where = _random_z_where(rng, batch, s_range=(1.0, 2.5),
                            shift=0.6).astype(np.float64)
  _assert_off_kinks(_extract_positions(z_where, size, height, width))
  loss = jax.jit(lambda zw: (glimpse.extract(images, zw, size, method) *
                             probe).sum())
  grad = jax.grad(loss)(jnp.asarray(z_where))
  assert grad.dtype == jnp.float64
  expected = _central_difference_grad(loss, z_where)
  assert np.abs(expected).max() > 1e-2  # The probe sees the glimpse move.
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_render_grads(method, x64):
  del x64
  rng = np.random.default_rng(7)
  batch, height, width, size = 2, 9, 11, 4
  glimpses = rng.uniform(size=(batch, size, size))
  probe = jnp.asarray(rng.normal(size=(batch, height, width)))
  z_where = _random_z_where(rng, batch, s_range=(1.0, 2.5), shift=0.6).astype(
      np.float64)
  _assert_off_kinks(_render_positions(z_where, size, height, width))
  loss = jax.jit(lambda g, zw: (glimpse.render(g, zw, height, width, method) *
                                probe).sum())
  grad_g, grad_zw = jax.grad(loss, argnums=(0, 1))(jnp.asarray(glimpses),
                                                   jnp.asarray(z_where))
  expected_g = _central_difference_grad(lambda g: loss(g, z_where), glimpses)
  expected_zw = _central_difference_grad(lambda zw: loss(glimpses, zw),
                                         z_where)
  assert np.abs(expected_zw).max() > 1e-2
  np.testing.assert_allclose(grad_g, expected_g, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad_zw, expected_zw, rtol=1e-6, atol=1e-6)


def test_render_sum_grads(x64):
  del x64
  rng = np.random.default_rng(8)
  batch, slots, height, width, size = 2, 2, 9, 11, 4
  glimpses = rng.uniform(size=(batch, slots, size, size))
  z_where = _random_z_where(rng, batch * slots, s_range=(1.0, 2.5),
                            shift=0.6).astype(np.float64)
  _assert_off_kinks(_render_positions(z_where, size, height, width))
  z_where = z_where.reshape(batch, slots, 3)
  weights = rng.uniform(0.2, 1.0, size=(batch, slots))
  probe = jnp.asarray(rng.normal(size=(batch, height, width)))
  loss = jax.jit(lambda g, zw, w: (
      glimpse.render_sum(g, zw, w, height, width) * probe).sum())
  args = (glimpses, z_where, weights)
  grads = jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(a) for a in args))
  for k, grad in enumerate(grads):
    def partial_loss(value, k=k):
      return loss(*(value if i == k else a for i, a in enumerate(args)))
    expected = _central_difference_grad(partial_loss, args[k])
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_render_sum_grads_match_autodiff_of_separate_renders():
  """The hand-written backward of `render_sum` against plain autodiff.

  The reference renders each slot alone with `render` (autodiff through the
  separable formulation) and sums the weighted canvases; boxes reach past the
  canvas edges so that clipped rows and columns are covered.
  """
  rng = np.random.default_rng(13)
  batch, slots, height, width, size = 4, 3, 15, 17, 6
  glimpses = jnp.asarray(rng.uniform(size=(batch, slots, size, size)),
                         jnp.float32)
  z_where = jnp.asarray(_random_z_where(rng, batch * slots, s_range=(0.8, 3.0),
                                        shift=0.9).reshape(batch, slots, 3))
  weights = jnp.asarray(rng.uniform(0.2, 1.0, size=(batch, slots)),
                        jnp.float32)
  probe = jnp.asarray(rng.normal(size=(batch, height, width)), jnp.float32)

  def reference(g, zw, w):
    each = glimpse.render(g.reshape(-1, size, size), zw.reshape(-1, 3), height,
                          width, "separable").reshape(batch, slots, height,
                                                      width)
    return ((w[..., None, None] * each).sum(1) * probe).sum()

  def fused(g, zw, w):
    return (glimpse.render_sum(g, zw, w, height, width) * probe).sum()

  args = (glimpses, z_where, weights)
  expected = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(*args)
  got = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(*args)
  for g, e in zip(got, expected):
    assert np.abs(e).max() > 1e-2
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


# --------------------------------------------------- render_sum and agreement


@pytest.mark.parametrize("method", METHODS)
def test_render_sum_equals_weighted_sum_of_renders(method):
  rng = np.random.default_rng(9)
  batch, slots, height, width, size = 3, 4, 14, 18, 6
  glimpses = rng.uniform(size=(batch, slots, size, size)).astype(np.float32)
  z_where = _random_z_where(rng, batch * slots).reshape(batch, slots, 3)
  weights = rng.uniform(size=(batch, slots)).astype(np.float32)
  weights[0, 1] = 0.0  # An absent slot.
  summed = _render_sum(glimpses, z_where, weights, height, width)
  chex.assert_shape(summed, (batch, height, width))
  each = _render(glimpses.reshape(-1, size, size),
                        z_where.reshape(-1, 3), height, width, method)
  each = np.asarray(each).reshape(batch, slots, height, width)
  expected = (weights[:, :, None, None] * each).sum(1)
  chex.assert_trees_all_close(summed, expected, atol=1e-5)
  assert np.abs(expected).max() > 0.1


def test_methods_agree():
  rng = np.random.default_rng(10)
  batch, height, width, size = 8, 20, 20, 10
  images = rng.uniform(size=(batch, height, width)).astype(np.float32)
  glimpses = rng.uniform(size=(batch, size, size)).astype(np.float32)
  z_where = _random_z_where(rng, batch, s_range=(0.8, 4.0))
  chex.assert_trees_all_close(
      _extract(images, z_where, size, "gather"),
      _extract(images, z_where, size, "separable"), atol=1e-5)
  chex.assert_trees_all_close(
      _render(glimpses, z_where, height, width, "gather"),
      _render(glimpses, z_where, height, width, "separable"),
      atol=1e-5)


# ----------------------------------------------------------------- box corners


def test_box_corners_known_boxes():
  height, width = 40, 60
  full = glimpse.box_corners(jnp.array([1.0, 0.0, 0.0]), height, width)
  chex.assert_shape(full, (4,))
  chex.assert_trees_all_close(full, jnp.array([0.0, 0.0, width, height]),
                              atol=1e-5)
  quarter = glimpse.box_corners(jnp.array([2.0, 0.5, -0.5]), height, width)
  # Half-width 1/2: x spans [0, 1] (the right half), y spans [-1, 0] (top).
  chex.assert_trees_all_close(
      quarter, jnp.array([width / 2, 0.0, width, height / 2]), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_rendered_ink_lies_inside_box_corners(method):
  rng = np.random.default_rng(11)
  batch, height, width, size = 8, 40, 40, 20
  z_where = _random_z_where(rng, batch, s_range=(1.0, 4.0), shift=0.8)
  ones = np.ones((batch, size, size), np.float32)
  canvas = np.asarray(_render(ones, z_where, height, width, method))
  boxes = np.asarray(glimpse.box_corners(z_where, height, width))
  rows = np.arange(height)[:, None]
  cols = np.arange(width)[None, :]
  for b in range(batch):
    x0, y0, x1, y1 = boxes[b]
    # Pixel (r, c) has its centre at (c + 0.5, r + 0.5) in box units.
    near = ((cols + 0.5 >= x0 - 1) & (cols + 0.5 <= x1 + 1) &
            (rows + 0.5 >= y0 - 1) & (rows + 0.5 <= y1 + 1))
    deep = ((cols + 0.5 >= x0 + 1) & (cols + 0.5 <= x1 - 1) &
            (rows + 0.5 >= y0 + 1) & (rows + 0.5 <= y1 - 1))
    assert canvas[b].sum() > 1.0
    np.testing.assert_allclose(canvas[b][~near], 0.0, atol=1e-6)
    np.testing.assert_allclose(canvas[b][deep], 1.0, atol=1e-5)


# -------------------------------------------------------------- batched shapes


def test_batched_shapes():
  """Output shapes and dtypes, traced abstractly (nothing is compiled)."""
  batch, slots, height, width, size = 5, 3, 16, 24, 8
  images = jax.ShapeDtypeStruct((batch, height, width), jnp.float32)
  glimpses = jax.ShapeDtypeStruct((batch, size, size), jnp.float32)
  z_where = jax.ShapeDtypeStruct((batch, 3), jnp.float32)
  for method in METHODS:
    out = jax.eval_shape(lambda i, z, m=method: glimpse.extract(i, z, size, m),
                         images, z_where)
    chex.assert_shape(out, (batch, size, size))
    chex.assert_type(out, jnp.float32)
    out = jax.eval_shape(
        lambda g, z, m=method: glimpse.render(g, z, height, width, m),
        glimpses, z_where)
    chex.assert_shape(out, (batch, height, width))
    chex.assert_type(out, jnp.float32)
  slot_glimpses = jax.ShapeDtypeStruct((batch, slots, size, size), jnp.float32)
  slot_z_where = jax.ShapeDtypeStruct((batch, slots, 3), jnp.float32)
  weights = jax.ShapeDtypeStruct((batch, slots), jnp.float32)
  out = jax.eval_shape(
      lambda g, z, w: glimpse.render_sum(g, z, w, height, width),
      slot_glimpses, slot_z_where, weights)
  chex.assert_shape(out, (batch, height, width))
  chex.assert_type(out, jnp.float32)
  out = jax.eval_shape(lambda z: glimpse.box_corners(z, height, width),
                       slot_z_where)
  chex.assert_shape(out, (batch, slots, 4))
  # And one concrete batched call of each.
  rng = np.random.default_rng(12)
  concrete = _render_sum(
      rng.uniform(size=(batch, slots, size, size)).astype(np.float32),
      _random_z_where(rng, batch * slots).reshape(batch, slots, 3),
      np.ones((batch, slots), np.float32), height, width)
  chex.assert_shape(concrete, (batch, height, width))
