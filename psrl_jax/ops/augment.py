"""Image augmentation: random shift and intensity for Atari (DrQ / SPR); random crop and translation
for DMC pixels (CURL / RAD).

All functions are pure and jittable; randomness is drawn per sample, so a batch of B
observations gets B independent shifts / intensity factors from one key.
"""

import jax
import jax.numpy as jnp


def to_float(obs_uint8: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]."""
    return obs_uint8.astype(jnp.float32) / 255.0


def random_shift(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Replicate-pads H and W by `pad` px, then crops back to H x W at a random offset.

    images: [B, F, H, W] or [B, F, H, W, C], any dtype. One offset per sample, shared by
    all frames of that sample (the stack must stay temporally aligned); each offset
    coordinate is uniform on the integers [0, 2*pad], i.e. a shift in [-pad, pad].
    """
    if pad == 0:
        return images
    if images.ndim not in (4, 5):
        raise ValueError(f"expected [B,F,H,W] or [B,F,H,W,C], got shape {images.shape}")
    batch, height, width = images.shape[0], images.shape[2], images.shape[3]
    widths = [(0, 0), (0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (images.ndim - 4)
    padded = jnp.pad(images, widths, mode="edge")
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image, offset):  # image: [F, H+2p, W+2p, (C)]
        start = (0, offset[0], offset[1]) + (0,) * (image.ndim - 3)
        size = (image.shape[0], height, width) + image.shape[3:]
        return jax.lax.dynamic_slice(image, start, size)

    return jax.vmap(crop)(padded, offsets)


def random_intensity(key: jax.Array, images: jax.Array, scale: float) -> jax.Array:
    """x * (1 + scale * clip(N(0, 1), -2, 2)) with one noise value per sample."""
    noise = jnp.clip(jax.random.normal(key, (images.shape[0],)), -2.0, 2.0)
    factor = 1.0 + scale * noise
    factor = factor.reshape((-1,) + (1,) * (images.ndim - 1)).astype(images.dtype)
    return images * factor


def augment_observations(key: jax.Array, obs_uint8: jax.Array, shift_pad: int, intensity_scale: float) -> jax.Array:
    """uint8 stacks -> float32 in [0, 1] (approximately, after intensity), augmented.

    `shift_pad` and `intensity_scale` are static Python numbers; 0 switches a step off.
    """
    shift_key, intensity_key = jax.random.split(key)
    # Shift before converting: padding/cropping uint8 moves 4x fewer bytes.
    images = random_shift(shift_key, obs_uint8, shift_pad) if shift_pad > 0 else obs_uint8
    images = to_float(images)
    if intensity_scale > 0:
        images = random_intensity(intensity_key, images, intensity_scale)
    return images


def random_crop(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """[B, F, H, W, (C)] -> [B, F, size, size, (C)] at one uniform random offset per sample, shared by
    its frames (CURL's random crop: 100 -> 84 on DMC). Offsets are integers in [0, H - size]."""
    if images.ndim not in (4, 5):
        raise ValueError(f"expected [B,F,H,W] or [B,F,H,W,C], got shape {images.shape}")
    height, width = images.shape[2], images.shape[3]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size {size} must be in [1, min(H, W) = {min(height, width)}]")
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, jnp.array([height - size + 1, width - size + 1]))

    def crop(image, offset):  # image: [F, H, W, (C)]
        start = (0, offset[0], offset[1]) + (0,) * (image.ndim - 3)
        return jax.lax.dynamic_slice(image, start, (image.shape[0], size, size) + image.shape[3:])

    return jax.vmap(crop)(images, offsets)


def center_crop(images: jax.Array, size: int) -> jax.Array:
    """The deterministic crop used when acting and evaluating: the central size x size window
    (for an odd margin the extra row/column is dropped at the bottom/right, as CURL does)."""
    height, width = images.shape[2], images.shape[3]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size {size} must be in [1, min(H, W) = {min(height, width)}]")
    top, left = (height - size) // 2, (width - size) // 2
    return images[:, :, top : top + size, left : left + size]


def augment_pixels(key: jax.Array, obs_uint8: jax.Array, crop_size: int, translate_pad: int) -> jax.Array:
    """DMC: uint8 [B, F, H, W, 3] -> float32 [B, F, crop, crop, 3] in [0, 1]: a random crop to
    `crop_size`, then a random translation of +-`translate_pad` px (replicate padding; 0: off)."""
    crop_key, shift_key = jax.random.split(key)
    images = random_crop(crop_key, obs_uint8, crop_size)
    if translate_pad > 0:
        images = random_shift(shift_key, images, translate_pad)
    return to_float(images)
