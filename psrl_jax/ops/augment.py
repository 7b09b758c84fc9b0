"""Image augmentation for Atari observations: random shift and intensity (DrQ / SPR).

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
