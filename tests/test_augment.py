"""Random shift / intensity augmentation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.ops.augment import (
    augment_observations,
    augment_pixels,
    center_crop,
    random_crop,
    random_intensity,
    random_shift,
    to_float,
)

PAD = 4
SIZE = 16  # 16x16 coordinate codes h*16+w fit exactly in uint8


def _coordinate_images(batch, frames, channels=None):
    code = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    images = np.broadcast_to(code, (batch, frames, SIZE, SIZE))
    if channels is not None:
        images = np.broadcast_to(images[..., None], images.shape + (channels,))
    return jnp.asarray(images)


def _recover_shifts(out):
    """Per-sample, per-frame (dy, dx) from the centre pixel of coordinate-coded images."""
    centre = np.asarray(out[:, :, SIZE // 2, SIZE // 2]).astype(int)  # [B, F]
    return np.stack([centre // SIZE - SIZE // 2, centre % SIZE - SIZE // 2], axis=-1)


def _expected_crop(shift):
    """Edge padding then crop with shift (dy, dx): out[i, j] = in[clip(i+dy), clip(j+dx)]."""
    rows = np.clip(np.arange(SIZE) + shift[0], 0, SIZE - 1)
    cols = np.clip(np.arange(SIZE) + shift[1], 0, SIZE - 1)
    return (rows[:, None] * SIZE + cols[None, :]).astype(np.uint8)


def test_shift_bounded_consistent_and_edge_padded():
    images = _coordinate_images(batch=256, frames=4)
    out = jax.jit(random_shift, static_argnums=2)(jax.random.key(0), images, PAD)
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, jnp.uint8)
    shifts = _recover_shifts(out)  # [B, F, 2]
    assert np.all(np.abs(shifts) <= PAD)
    assert np.all(shifts == shifts[:, :1])  # every frame of a sample shifted equally
    # Uniform over [-pad, pad]: with 256 samples every value of each axis shows up.
    for axis in range(2):
        assert set(shifts[:, 0, axis].tolist()) == set(range(-PAD, PAD + 1))
    for b in range(8):  # the whole crop, including the replicated border
        np.testing.assert_array_equal(out[b, 2], _expected_crop(shifts[b, 0]))


def test_shift_accepts_channels_and_float():
    images = _coordinate_images(batch=8, frames=3, channels=2).astype(jnp.float32)
    out = random_shift(jax.random.key(1), images, PAD)
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    shifts = _recover_shifts(out[..., 0])
    assert np.all(np.abs(shifts) <= PAD) and np.all(shifts == shifts[:, :1])


def test_shift_per_sample_and_reproducible():
    images = _coordinate_images(batch=32, frames=2)
    a = random_shift(jax.random.key(2), images, PAD)
    b = random_shift(jax.random.key(2), images, PAD)
    c = random_shift(jax.random.key(3), images, PAD)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    shifts = _recover_shifts(a)[:, 0]
    assert len({tuple(s) for s in shifts}) > 10  # 81 possible offsets over 32 samples
    np.testing.assert_array_equal(random_shift(jax.random.key(2), images, 0), images)


def test_intensity_range_and_per_sample():
    scale = 0.05
    images = jnp.ones((256, 4, 8, 8), jnp.float32)
    out = jax.jit(random_intensity, static_argnums=2)(jax.random.key(0), images, scale)
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, jnp.float32)
    factors = np.asarray(out[:, 0, 0, 0])
    np.testing.assert_allclose(out, factors[:, None, None, None] * np.ones((4, 8, 8)), rtol=1e-6)
    assert np.all(factors >= 1 - 2 * scale - 1e-6) and np.all(factors <= 1 + 2 * scale + 1e-6)
    assert len(np.unique(factors)) > 200
    again = random_intensity(jax.random.key(0), images, scale)
    np.testing.assert_allclose(out, again, rtol=1e-6)


def test_augment_observations():
    obs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 4, 84, 84)), jnp.uint8)
    out = jax.jit(augment_observations, static_argnums=(2, 3))(jax.random.key(1), obs, 4, 0.05)
    chex.assert_shape(out, obs.shape)
    chex.assert_type(out, jnp.float32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 2 * 0.05 + 1e-6
    # The composition of the two steps tested above, shift first (on uint8), with the split keys.
    shift_key, intensity_key = jax.random.split(jax.random.key(1))
    want = random_intensity(intensity_key, to_float(random_shift(shift_key, obs, 4)), 0.05)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert float(jnp.mean(jnp.abs(out - to_float(obs)))) > 0.05  # it did augment
    plain = augment_observations(jax.random.key(1), obs, 0, 0.0)
    np.testing.assert_allclose(plain, to_float(obs))
    np.testing.assert_allclose(to_float(jnp.array([0, 255], jnp.uint8)), [0.0, 1.0])
    # vmappable over a leading seed axis
    keys = jax.random.split(jax.random.key(2), 2)
    seeded = jax.vmap(lambda k, o: augment_observations(k, o, 4, 0.05))(keys, obs.reshape(2, 4, 4, 84, 84))
    chex.assert_shape(seeded, (2, 4, 4, 84, 84))
    for i in range(2):  # each seed's slice is that seed's own call
        np.testing.assert_allclose(seeded[i], augment_observations(keys[i], obs.reshape(2, 4, 4, 84, 84)[i], 4, 0.05))


# ----- DMC: random crop (CURL / RAD), centre crop, augment_pixels -------------------------------


def _random_pixels(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _crop_offsets(key, batch, height, width, size):
    """The offsets random_crop draws: randint over (B, 2) with per-axis bounds [0, H - size]."""
    bounds = jnp.array([height - size + 1, width - size + 1])
    return np.asarray(jax.random.randint(key, (batch, 2), 0, bounds))


def _numpy_crop(images, offsets, size):
    images = np.asarray(images)
    return np.stack([images[b, :, y : y + size, x : x + size] for b, (y, x) in enumerate(offsets)])


def test_random_crop_matches_numpy_reference():
    batch, frames, height, width, size = 64, 3, 20, 24, 12
    images = _random_pixels((batch, frames, height, width, 3))
    key = jax.random.key(5)
    out = jax.jit(random_crop, static_argnums=2)(key, images, size)
    chex.assert_shape(out, (batch, frames, size, size, 3))
    chex.assert_type(out, jnp.uint8)
    offsets = _crop_offsets(key, batch, height, width, size)
    assert np.all(offsets >= 0) and np.all(offsets[:, 0] <= height - size) and np.all(offsets[:, 1] <= width - size)
    np.testing.assert_array_equal(out, _numpy_crop(images, offsets, size))
    assert len({tuple(o) for o in offsets}) > 20  # per-sample offsets (117 possible over 64 samples)
    # Per axis, the extreme offsets are reachable (the bound H - size is inclusive).
    assert offsets[:, 0].max() == height - size and offsets[:, 1].max() == width - size


def test_random_crop_offset_shared_by_frames():
    # Coordinate-coded frames (value = row * W + col), identical in every frame: each frame of a
    # sample must show the same window; frames of different samples may not.
    code = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    images = jnp.asarray(np.broadcast_to(code, (32, 4, SIZE, SIZE)))
    size = 9
    out = np.asarray(random_crop(jax.random.key(1), images, size))
    chex.assert_shape(out, (32, 4, size, size))
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))
    tops, lefts = out[:, 0, 0, 0] // SIZE, out[:, 0, 0, 0] % SIZE
    assert len(set(zip(tops.tolist(), lefts.tolist(), strict=True))) > 10
    for b in range(4):  # the whole window is contiguous
        expected = code[tops[b] : tops[b] + size, lefts[b] : lefts[b] + size]
        np.testing.assert_array_equal(out[b, 2], expected)


def test_random_crop_rejects_bad_sizes():
    images = _random_pixels((2, 3, 10, 10, 3))
    with pytest.raises(ValueError, match="crop size"):
        random_crop(jax.random.key(0), images, 11)
    with pytest.raises(ValueError, match="crop size"):
        random_crop(jax.random.key(0), images, 0)
    with pytest.raises(ValueError, match="crop size"):
        center_crop(images, 11)
    # size == H is the identity.
    np.testing.assert_array_equal(random_crop(jax.random.key(0), images, 10), images)


@pytest.mark.parametrize("height,size", [(100, 84), (64, 56), (11, 4)])
def test_center_crop_matches_numpy_slicing(height, size):
    images = _random_pixels((2, 3, height, height, 3), seed=height)
    out = center_crop(images, size)
    top = (height - size) // 2
    chex.assert_shape(out, (2, 3, size, size, 3))
    np.testing.assert_array_equal(out, np.asarray(images)[:, :, top : top + size, top : top + size])


def test_augment_pixels_without_translation_is_crop_over_255():
    images = _random_pixels((16, 3, 20, 20, 3), seed=3)
    key = jax.random.key(9)
    out = jax.jit(augment_pixels, static_argnums=(2, 3))(key, images, 14, 0)
    chex.assert_shape(out, (16, 3, 14, 14, 3))
    chex.assert_type(out, jnp.float32)
    crop_key, _ = jax.random.split(key)  # mirrors augment_pixels' key split
    offsets = _crop_offsets(crop_key, 16, 20, 20, 14)
    expected = _numpy_crop(images, offsets, 14).astype(np.float32) / 255.0
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_augment_pixels_translation_is_shift_of_the_crop():
    images = _random_pixels((16, 3, 20, 20, 3), seed=4)
    key = jax.random.key(11)
    out = augment_pixels(key, images, 14, 2)
    chex.assert_shape(out, (16, 3, 14, 14, 3))
    chex.assert_type(out, jnp.float32)
    crop_key, shift_key = jax.random.split(key)
    expected = to_float(random_shift(shift_key, random_crop(crop_key, images, 14), 2))
    np.testing.assert_array_equal(out, expected)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.array_equal(out, augment_pixels(key, images, 14, 0))  # the translation did something
