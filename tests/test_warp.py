"""Bilinear warp by a dense flow map, and flow resizing (psrl_jax/ops/warp.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.test_util import check_grads

from psrl_jax.config import WARP_PADDINGS
from psrl_jax.ops.warp import PADDINGS, outside_fraction, resize_flow, warp


def _scipy_warp(feat, flow):
    """Reference for one sample: feat [H, W, C], flow [H, W, 2] (dx, dy) -> [H, W, C].

    JAX's map_coordinates mode "constant" is SciPy's "grid-constant" (out-of-map corners
    contribute 0 but interpolation continues past the edge); SciPy's own "constant" would
    return 0 for any point outside [0, n - 1], so it is the wrong reference.
    """
    height, width = feat.shape[:2]
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([ys + flow[..., 1], xs + flow[..., 0]]).astype(np.float64)
    channels = [
        scipy.ndimage.map_coordinates(feat[..., c].astype(np.float64), coords, order=1, mode="grid-constant", cval=0.0)
        for c in range(feat.shape[-1])
    ]
    return np.stack(channels, axis=-1)


@pytest.mark.parametrize("shape", [(2, 7, 7, 3), (3, 6, 9, 5), (1, 4, 5, 1)])
def test_warp_matches_scipy_grid_constant(shape):
    rng = np.random.default_rng(sum(shape))
    batch, height, width, _ = shape
    feat = rng.normal(size=shape).astype(np.float32)
    # Flows up to ~1.5x the map size: many samples land partly or wholly outside the map.
    scale = 1.5 * np.array([width, height], np.float32)
    flow = (rng.uniform(-1.0, 1.0, size=(batch, height, width, 2)) * scale).astype(np.float32)
    out = np.asarray(warp(jnp.asarray(feat), jnp.asarray(flow)))
    ref = np.stack([_scipy_warp(feat[b], flow[b]) for b in range(batch)])
    chex.assert_shape(out, shape)
    # Sanity: the test exercises both in-map samples and fully-outside (zero) samples.
    assert np.mean(np.all(ref == 0.0, axis=-1)) > 0.1
    assert np.mean(np.any(ref != 0.0, axis=-1)) > 0.1
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_warp_partly_outside_keeps_inside_corners():
    # A sample half a pixel left of column 0 sees 0.5 * feat[:, 0] (grid-constant), not 0.
    feat = jnp.arange(1.0, 13.0).reshape(1, 3, 4, 1)
    flow = jnp.zeros((1, 3, 4, 2)).at[..., 0].set(-0.5)
    out = np.asarray(warp(feat, flow))[0, :, :, 0]
    feat_np = np.asarray(feat)[0, :, :, 0]
    np.testing.assert_allclose(out[:, 0], 0.5 * feat_np[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1:], 0.5 * (feat_np[:, :-1] + feat_np[:, 1:]), atol=1e-6)


def test_zero_flow_is_identity():
    feat = jax.random.normal(jax.random.key(0), (2, 6, 9, 4))
    out = warp(feat, jnp.zeros((2, 6, 9, 2)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(feat), atol=1e-6)


@pytest.mark.parametrize("dx,dy", [(2, -1), (-3, 2), (0, 4), (10, 0)])
def test_integer_flow_is_a_zero_filled_shift(dx, dy):
    height, width = 6, 9
    feat = np.asarray(jax.random.normal(jax.random.key(1), (1, height, width, 3)))
    flow = np.broadcast_to(np.array([dx, dy], np.float32), (1, height, width, 2))
    out = np.asarray(warp(jnp.asarray(feat), jnp.asarray(flow)))
    # out[y, x] = feat[y + dy, x + dx] where that is inside the map, else 0.
    ref = np.zeros_like(feat)
    # Stops are clamped at 0 so a shift larger than the map gives empty slices (all zeros).
    ys_out = slice(max(0, -dy), max(0, min(height, height - dy)))
    xs_out = slice(max(0, -dx), max(0, min(width, width - dx)))
    ys_in = slice(max(0, dy), max(0, min(height, height + dy)))
    xs_in = slice(max(0, dx), max(0, min(width, width + dx)))
    ref[:, ys_out, xs_out] = feat[:, ys_in, xs_in]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def _smooth_flow(shape, key):
    """Flow whose sample coordinates have fractional parts in [0.3, 0.7]: bilinear warping has
    kinks where coordinates cross integers, so finite differences need to stay inside one cell."""
    k_int, k_frac = jax.random.split(key)
    base = jax.random.randint(k_int, shape, -3, 4).astype(jnp.float32)
    frac = jax.random.uniform(k_frac, shape, minval=0.3, maxval=0.7)
    return base + frac


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("modes", [("rev",), ("fwd",)])
def test_warp_gradients_numerical(modes, padding):
    key_feat, key_flow = jax.random.split(jax.random.key(2))
    feat = jax.random.normal(key_feat, (2, 5, 6, 3))
    flow = _smooth_flow((2, 5, 6, 2), key_flow)
    # eps 1e-2 << 0.3 keeps every perturbed coordinate inside its cell; float32 needs loose tolerances.
    tolerances = dict(order=1, modes=modes, eps=1e-2, atol=1e-2, rtol=1e-2)
    check_grads(lambda f: warp(f, flow, padding), (feat,), **tolerances)
    check_grads(lambda fl: warp(feat, fl, padding), (flow,), **tolerances)


def test_flow_gradient_is_nonzero_inside_map():
    # Guard against a silently stopped gradient: moving the sample must change the output.
    feat = jax.random.normal(jax.random.key(3), (1, 5, 5, 2))
    flow = jnp.full((1, 5, 5, 2), 0.4)
    grad = jax.grad(lambda fl: jnp.sum(warp(feat, fl) ** 2))(flow)
    assert float(jnp.abs(grad[0, :3, :3]).sum()) > 1e-3


def test_extra_leading_axes_jit_and_vmap():
    key_feat, key_flow = jax.random.split(jax.random.key(4))
    batch, frames, height, width, channels = 2, 3, 6, 7, 4
    feat = jax.random.normal(key_feat, (batch, frames, height, width, channels))
    flow = 3.0 * jax.random.normal(key_flow, (batch, frames, height, width, 2))
    out = warp(feat, flow)
    chex.assert_shape(out, (batch, frames, height, width, channels))
    flat = warp(feat.reshape(-1, height, width, channels), flow.reshape(-1, height, width, 2))
    np.testing.assert_allclose(np.asarray(out), np.asarray(flat).reshape(out.shape), atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(warp)(feat, flow)), np.asarray(out), atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(warp)(feat, flow)), np.asarray(out), atol=1e-5)


@pytest.mark.parametrize(
    "feat_shape,flow_shape",
    [
        ((2, 5, 5, 3), (2, 5, 5, 3)),  # flow must end in 2
        ((2, 5, 5, 3), (2, 5, 6, 2)),  # spatial mismatch
        ((2, 5, 5, 3), (1, 5, 5, 2)),  # batch mismatch
        ((2, 5, 5, 3), (5, 5, 2)),  # missing leading axis
    ],
)
def test_bad_shapes_raise(feat_shape, flow_shape):
    with pytest.raises(ValueError):
        warp(jnp.zeros(feat_shape), jnp.zeros(flow_shape))


def test_unknown_padding_raises():
    assert tuple(PADDINGS) == WARP_PADDINGS  # the config check and the op accept the same names
    with pytest.raises(ValueError, match="padding"):
        warp(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2)), padding="reflect")


def test_border_padding_matches_scipy_nearest():
    """padding="border": off-map samples read the nearest edge (SciPy's mode "nearest", PyTorch's
    grid_sample padding "border"); inside the map it is the same bilinear warp as "zeros"."""
    rng = np.random.default_rng(7)
    feat = rng.normal(size=(3, 6, 9, 4)).astype(np.float32)
    flow = (rng.uniform(-1.0, 1.0, size=(3, 6, 9, 2)) * np.array([6.0, 4.0])).astype(np.float32)
    out = np.asarray(warp(jnp.asarray(feat), jnp.asarray(flow), padding="border"))
    ys, xs = np.meshgrid(np.arange(6), np.arange(9), indexing="ij")
    ref = np.stack(
        [
            np.stack(
                [
                    scipy.ndimage.map_coordinates(
                        feat[b, ..., c].astype(np.float64),
                        [ys + flow[b, ..., 1], xs + flow[b, ..., 0]],
                        order=1,
                        mode="nearest",
                    )
                    for c in range(4)
                ],
                axis=-1,
            )
            for b in range(3)
        ]
    )
    np.testing.assert_allclose(out, ref, atol=1e-5)
    zeros = np.asarray(warp(jnp.asarray(feat), jnp.asarray(flow)))
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (x >= 0) & (x <= 8) & (y >= 0) & (y <= 5)
    assert 0.1 < inside.mean() < 0.9
    np.testing.assert_allclose(out[inside], zeros[inside], atol=1e-5)
    assert np.abs(out[~inside]).min() > 0 and np.abs(zeros[~inside]).max() < np.abs(out[~inside]).max()


def test_outside_fraction_against_numpy():
    rng = np.random.default_rng(3)
    flow = (rng.normal(size=(2, 3, 5, 6, 2)) * 3.0).astype(np.float32)
    ys, xs = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    expected = np.mean((x < 0) | (x > 5) | (y < 0) | (y > 4))
    assert 0.2 < expected < 0.9
    np.testing.assert_allclose(float(outside_fraction(jnp.asarray(flow))), expected, atol=1e-6)
    assert float(outside_fraction(jnp.zeros((1, 5, 6, 2)))) == 0.0  # zero flow stays on the map
    edge = jnp.zeros((1, 5, 6, 2)).at[:, :, -1, 0].set(0.5)  # the last column half a pixel past the edge
    np.testing.assert_allclose(float(outside_fraction(edge)), 1 / 6, atol=1e-6)


def test_resize_constant_flow_scales_values():
    flow = jnp.broadcast_to(jnp.array([1.5, -0.75]), (2, 7, 7, 2))
    resized = resize_flow(flow, 56, 56)
    chex.assert_shape(resized, (2, 56, 56, 2))
    np.testing.assert_allclose(np.asarray(resized[..., 0]), 1.5 * 8, atol=1e-5)
    np.testing.assert_allclose(np.asarray(resized[..., 1]), -0.75 * 8, atol=1e-5)


def test_resize_non_uniform_scale():
    # dx scales with the width ratio, dy with the height ratio.
    flow = jnp.broadcast_to(jnp.array([1.0, 1.0]), (6, 9, 2))
    resized = resize_flow(flow, 12, 27)
    chex.assert_shape(resized, (12, 27, 2))
    np.testing.assert_allclose(np.asarray(resized[..., 0]), 3.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(resized[..., 1]), 2.0, atol=1e-5)


def test_resize_same_size_is_identity():
    flow = jax.random.normal(jax.random.key(5), (2, 7, 7, 2))
    np.testing.assert_array_equal(np.asarray(resize_flow(flow, 7, 7)), np.asarray(flow))


def test_resized_flow_warps_consistently():
    # A constant 1-pixel shift on a 7x7 map is an 8-pixel shift at 56x56: warping a smooth
    # 56x56 image with the resized flow equals shifting it by 8 pixels.
    size, factor = 56, 8
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.sin(xs / 9.0)[None, :, :, None] + np.cos(ys / 7.0)[None, :, :, None]
    flow_small = jnp.broadcast_to(jnp.array([1.0, -1.0]), (1, 7, 7, 2))
    flow_big = resize_flow(flow_small, size, size)
    out = np.asarray(warp(jnp.asarray(image, jnp.float32), flow_big))
    # out[y, x] = image[y - 8, x + 8] inside the map.
    np.testing.assert_allclose(out[0, factor:, : size - factor], image[0, : size - factor, factor:], atol=1e-4)
