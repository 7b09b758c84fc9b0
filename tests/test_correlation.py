"""Correlation volumes (psrl_jax/ops/correlation.py) against explicit NumPy loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.ops.correlation import correlation_all_pairs, correlation_local


def _all_pairs_reference(q, t):
    """corr[b, y, x, j * W + i] = <q[b, y, x], t[b, j, i]> / C, by plain loops."""
    batch, height, width, channels = q.shape
    out = np.zeros((batch, height, width, height * width), np.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for j in range(height):
                    for i in range(width):
                        out[b, y, x, j * width + i] = np.dot(q[b, y, x], t[b, j, i]) / channels
    return out


def _local_reference(q, t, d):
    """corr[b, y, x, (dy + d) * (2d + 1) + dx + d] = <q[b, y, x], t[b, y + dy, x + dx]> / C, 0 outside."""
    batch, height, width, channels = q.shape
    size = 2 * d + 1
    out = np.zeros((batch, height, width, size * size), np.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for dy in range(-d, d + 1):
                    for dx in range(-d, d + 1):
                        ty, tx = y + dy, x + dx
                        if 0 <= ty < height and 0 <= tx < width:
                            out[b, y, x, (dy + d) * size + dx + d] = np.dot(q[b, y, x], t[b, ty, tx]) / channels
    return out


def _random_pair(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 7, 7, 8), (1, 4, 6, 3), (2, 5, 3, 16)])
def test_all_pairs_matches_loops(shape):
    q, t = _random_pair(shape, seed=sum(shape))
    out = correlation_all_pairs(jnp.asarray(q), jnp.asarray(t))
    batch, height, width, _ = shape
    chex.assert_shape(out, (batch, height, width, height * width))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), _all_pairs_reference(q, t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("shape", [(2, 5, 7, 4), (1, 6, 4, 8)])
def test_local_matches_loops(shape, d):
    q, t = _random_pair(shape, seed=sum(shape) + d)
    out = correlation_local(jnp.asarray(q), jnp.asarray(t), d)
    batch, height, width, _ = shape
    chex.assert_shape(out, (batch, height, width, (2 * d + 1) ** 2))
    chex.assert_type(out, jnp.float32)
    ref = _local_reference(q, t, d)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_local_border_windows_are_zero():
    # At the top-left corner every displacement with dy < 0 or dx < 0 points outside the map.
    d = 2
    q, t = _random_pair((1, 5, 6, 4), seed=0)
    out = np.asarray(correlation_local(jnp.asarray(q), jnp.asarray(t), d)).reshape(1, 5, 6, 2 * d + 1, 2 * d + 1)
    corner = out[0, 0, 0]  # [dy + d, dx + d]
    assert np.all(corner[:d, :] == 0.0) and np.all(corner[:, :d] == 0.0)
    assert np.all(corner[d:, d:] != 0.0)
    # Bottom-right corner: dy > 0 or dx > 0 fall outside.
    corner = out[0, -1, -1]
    assert np.all(corner[d + 1 :, :] == 0.0) and np.all(corner[:, d + 1 :] == 0.0)
    assert np.all(corner[: d + 1, : d + 1] != 0.0)


def test_local_with_full_window_equals_all_pairs_subset():
    # With d >= map size every target position is in the window, so the two layouts hold the same numbers.
    q, t = _random_pair((1, 3, 4, 5), seed=1)
    d = 4
    local = np.asarray(correlation_local(jnp.asarray(q), jnp.asarray(t), d)).reshape(1, 3, 4, 2 * d + 1, 2 * d + 1)
    full = np.asarray(correlation_all_pairs(jnp.asarray(q), jnp.asarray(t))).reshape(1, 3, 4, 3, 4)
    for y in range(3):
        for x in range(4):
            np.testing.assert_allclose(local[0, y, x, d - y : d - y + 3, d - x : d - x + 4], full[0, y, x], atol=1e-6)


def test_all_pairs_self_diagonal_is_squared_norm_over_channels():
    batch, height, width, channels = 2, 4, 5, 6
    q = jax.random.normal(jax.random.key(0), (batch, height, width, channels))
    out = np.asarray(correlation_all_pairs(q, q))
    flat_index = np.arange(height * width).reshape(height, width)  # (y, x) -> y * W + x
    diag = np.take_along_axis(out, np.broadcast_to(flat_index[None, :, :, None], (batch, height, width, 1)), -1)[..., 0]
    expected = np.sum(np.asarray(q) ** 2, axis=-1) / channels
    np.testing.assert_allclose(diag, expected, rtol=1e-5)
    # The local volume's centre entry (dy = dx = 0) is the same number.
    centre = np.asarray(correlation_local(q, q, 1))[..., 4]
    np.testing.assert_allclose(centre, expected, rtol=1e-5)


def test_jit_agrees():
    q, t = _random_pair((2, 5, 6, 4), seed=3)
    q, t = jnp.asarray(q), jnp.asarray(t)
    np.testing.assert_allclose(
        np.asarray(jax.jit(correlation_all_pairs)(q, t)), np.asarray(correlation_all_pairs(q, t)), atol=1e-6
    )
    local = jax.jit(correlation_local, static_argnums=2)
    np.testing.assert_allclose(np.asarray(local(q, t, 2)), np.asarray(correlation_local(q, t, 2)), atol=1e-6)
