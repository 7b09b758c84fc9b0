"""Correlation volumes between a query and a target feature map (Table 3, row 5).

Both take NHWC maps of the same shape and return the dot products divided by the channel
count (so the scale does not grow with width), channels last:
  all_pairs:  corr[b, y, x, j * W + i]                   = <q[b, y, x], t[b, j, i]> / C
  local:      corr[b, y, x, (dy + d) * (2d + 1) + dx + d] = <q[b, y, x], t[b, y + dy, x + dx]> / C,
              zero where (y + dy, x + dx) falls outside the map.
All pairs suits small maps (Atari 7x7 -> 49 channels); the local window with maximum
displacement d suits larger maps (DMC).
"""

import jax
import jax.numpy as jnp


def correlation_all_pairs(query: jax.Array, target: jax.Array) -> jax.Array:
    """[B, H, W, C] x [B, H, W, C] -> [B, H, W, H * W]."""
    batch, height, width, channels = query.shape
    corr = jnp.einsum("byxc,bjic->byxji", query, target) / channels
    return corr.reshape(batch, height, width, height * width)


def correlation_local(query: jax.Array, target: jax.Array, max_displacement: int) -> jax.Array:
    """[B, H, W, C] x [B, H, W, C] -> [B, H, W, (2d + 1)^2] for displacements in [-d, d]^2."""
    d = max_displacement
    batch, height, width, channels = query.shape
    padded = jnp.pad(target, ((0, 0), (d, d), (d, d), (0, 0)))
    slices = []
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            shifted = jax.lax.dynamic_slice(padded, (0, d + dy, d + dx, 0), (batch, height, width, channels))
            slices.append(jnp.sum(query * shifted, axis=-1))
    return jnp.stack(slices, axis=-1) / channels
