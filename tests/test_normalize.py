"""Per-sample min-max normalisation (psrl_jax/ops/normalize.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.ops.normalize import minmax_normalize


def _spr_renormalize(tensor, first_dim):
    """SPR's renormalize (src/models.py) in NumPy: flatten from first_dim, (x - min) / (max - min)."""
    flat = tensor.reshape(tensor.shape[:first_dim] + (-1,)).astype(np.float64)
    lo = flat.min(axis=first_dim, keepdims=True)
    hi = flat.max(axis=first_dim, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(tensor.shape)


@pytest.mark.parametrize("shape,num_feature_dims", [((4, 7, 7, 8), 3), ((3, 5), 1), ((2, 3, 4, 6, 5), 2)])
def test_matches_spr_renormalize(shape, num_feature_dims):
    """SPR normalises NCHW maps with renormalize(x, -3); ours takes NHWC maps: the same per-sample set."""
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 5.0 + 2.0
    out = minmax_normalize(jnp.asarray(x), num_feature_dims=num_feature_dims)
    chex.assert_shape(out, shape)
    chex.assert_type(out, jnp.float32)
    if num_feature_dims == 3:  # the layout SPR sees: channels first
        want = np.moveaxis(_spr_renormalize(np.moveaxis(x, -1, -3), x.ndim - 3), -3, -1)
    else:
        want = _spr_renormalize(x, x.ndim - num_feature_dims)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-6, rtol=1e-6)


def test_output_in_unit_interval_with_min_at_zero():
    x = 100.0 * jax.random.normal(jax.random.key(0), (6, 5, 5, 4))
    out = np.asarray(minmax_normalize(x))
    assert out.min() >= 0.0 and out.max() <= 1.0
    per_sample = out.reshape(6, -1)
    np.testing.assert_allclose(per_sample.min(axis=1), 0.0, atol=1e-7)
    np.testing.assert_allclose(per_sample.max(axis=1), 1.0, atol=1e-6)


def test_samples_are_independent():
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
    changed = x.at[1].multiply(50.0).at[1, 0, 0, 0].set(-1e3)
    out, out_changed = np.asarray(minmax_normalize(x)), np.asarray(minmax_normalize(changed))
    np.testing.assert_array_equal(out[0], out_changed[0])
    np.testing.assert_array_equal(out[2], out_changed[2])
    assert not np.allclose(out[1], out_changed[1])


def test_frames_are_normalised_separately():
    batch, frames = 2, 3
    x = jax.random.normal(jax.random.key(2), (batch, frames, 4, 5, 3))
    # Give every frame a different offset and scale: a per-sample (not per-frame) normalisation
    # would leave the frames' ranges different.
    x = x * jnp.arange(1.0, 1.0 + batch * frames).reshape(batch, frames, 1, 1, 1) + 10.0 * jnp.arange(frames).reshape(
        1, frames, 1, 1, 1
    )
    out = np.asarray(minmax_normalize(x, num_feature_dims=3))
    per_frame = out.reshape(batch, frames, -1)
    np.testing.assert_allclose(per_frame.min(axis=-1), 0.0, atol=1e-7)
    np.testing.assert_allclose(per_frame.max(axis=-1), 1.0, atol=1e-6)
    for f in range(frames):
        np.testing.assert_allclose(out[:, f], np.asarray(minmax_normalize(x[:, f])), atol=1e-7)


def test_constant_sample_is_finite():
    """Where SPR divides by zero (a constant sample, e.g. all-zero ReLU maps) ours gives zeros, and
    finite gradients."""
    out = np.asarray(minmax_normalize(jnp.full((2, 3, 3, 2), 7.0)))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, 0.0)
    grad = jax.grad(lambda x: jnp.sum(minmax_normalize(x) ** 2))(jnp.zeros((2, 3, 3, 2)))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_bad_num_feature_dims_raises():
    with pytest.raises(ValueError):
        minmax_normalize(jnp.zeros((2, 3)), num_feature_dims=3)
    with pytest.raises(ValueError):
        minmax_normalize(jnp.zeros((2, 3)), num_feature_dims=0)
