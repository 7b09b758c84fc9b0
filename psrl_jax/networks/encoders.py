"""Atari convolutional encoder (Nature DQN stack), stacked or frame by frame (DESIGN.md 1)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psrl_jax.ops.conv import Conv


def concat_frames(maps: jax.Array) -> jax.Array:
    """Per-frame maps [B, F, h, w, C] -> channel concatenation [B, h, w, F*C] (frame-major)."""
    batch, frames, h, w, channels = maps.shape
    return jnp.moveaxis(maps, 1, 3).reshape(batch, h, w, frames * channels)


class AtariEncoder(nn.Module):
    """Conv-ReLU-Dropout x3 with VALID padding: 84 -> 20 -> 9 -> 7.

    Input float32 [B, F, H, W] in [0, 1].
    framewise=False ("stacked", DER/SPR): frames are input channels -> [B, 7, 7, C].
    framewise=True (PSRL Table 3): the same convs (shared weights) on each frame as a
      single-channel image -> per-frame maps [B, F, 7, 7, C].
    Dropout (rng stream "dropout") runs only when train=True and dropout_rate > 0.
    return_skip=True also returns the second layer's maps (Table 3's en2, [B, F, 9, 9, C2]
    framewise), which the correspondence module's finest refinement level uses.
    `dtype` is the compute dtype of the convolutions (None: float32); parameters stay float32 and
    the maps are returned in the compute dtype (RainbowQNetwork.encode casts them to float32).
    """

    channels: Sequence[int] = (32, 64, 64)
    kernels: Sequence[int] = (8, 4, 3)
    strides: Sequence[int] = (4, 2, 1)
    dropout_rate: float = 0.0
    framewise: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, return_skip: bool = False):
        if x.ndim != 4:
            raise ValueError(f"expected [B, F, H, W], got shape {x.shape}")
        batch, frames, height, width = x.shape
        if self.framewise:
            h = x.reshape(batch * frames, height, width, 1)
        else:
            h = jnp.moveaxis(x, 1, -1)  # NHWC with frames as channels
        layer_outputs = []
        for channels, kernel, stride in zip(self.channels, self.kernels, self.strides, strict=True):
            h = Conv(channels, (kernel, kernel), (stride, stride), padding="VALID", dtype=self.dtype)(h)
            h = nn.relu(h)
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            layer_outputs.append(h)
        if self.framewise:
            layer_outputs = [o.reshape((batch, frames) + o.shape[1:]) for o in layer_outputs]
        if return_skip:
            return layer_outputs[-1], layer_outputs[-2]
        return layer_outputs[-1]
