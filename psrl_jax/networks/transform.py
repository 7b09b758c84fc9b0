"""PSRL's action-aware transform (AAT) and the global (vector) heads of the similarity loss.

ActionAwareTransform is Table 3's "Global Prediction Model": the one-hot action (Atari) or the
continuous action (DMC) tiled over the map, concatenated with the query stack's channels,
Conv(256, 3)-ReLU, Conv(64, 3)-ReLU, min-max normalise. Its output is the predicted map of the
newest frame; `predict_stack` turns it into the predicted stack (the input stack shifted by one
frame with the new map appended, our reading of DESIGN.md 1) so it can be rolled out for K steps
as SPR's transition model is.

GlobalProjection / GlobalPredictor are SPR's global head: flatten a normalised stack, project it
(online and EMA target side), predict (online side only), compare by cosine similarity.

Every module takes `dtype`, the compute dtype of its conv/dense layers (None: float32); parameters
are float32 and outputs are returned in float32 (the min-max normalisation runs in float32).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psrl_jax.networks.encoders import concat_frames
from psrl_jax.ops.conv import Conv
from psrl_jax.ops.normalize import minmax_normalize


class ActionAwareTransform(nn.Module):
    """stack [B, F, h, w, C] (normalised per-frame maps), action [B] int (discrete) or [B, D] float
    -> predicted newest-frame map [B, h, w, C_out], min-max normalised per sample."""

    num_actions: int  # discrete actions (one-hot); 0 for continuous actions used as given
    hidden: int = 256
    out_channels: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, stack: jax.Array, action: jax.Array) -> jax.Array:
        batch, _, h, w, _ = stack.shape
        x = concat_frames(stack)
        if self.num_actions > 0:
            action = jax.nn.one_hot(action, self.num_actions, dtype=x.dtype)
        action = action.reshape(batch, 1, 1, -1).astype(x.dtype)
        x = jnp.concatenate([x, jnp.broadcast_to(action, (batch, h, w, action.shape[-1]))], axis=-1)
        x = nn.relu(Conv(self.hidden, (3, 3), padding="SAME", dtype=self.dtype, name="conv1t")(x))
        x = nn.relu(Conv(self.out_channels, (3, 3), padding="SAME", dtype=self.dtype, name="conv2t")(x))
        return minmax_normalize(x.astype(jnp.float32), num_feature_dims=3)


def predict_stack(transform_apply, stack: jax.Array, action: jax.Array) -> jax.Array:
    """One AAT step on a stack: drop the oldest frame, append the predicted newest one."""
    new_frame = transform_apply(stack, action)
    return jnp.concatenate([stack[:, 1:], new_frame[:, None]], axis=1)


class GlobalProjection(nn.Module):
    """Flattened stack [B, F, h, w, C] -> [B, dim]: Dense-ReLU (our choice after SPR's projection)."""

    dim: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, stack: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.dim, dtype=self.dtype)(stack.reshape(stack.shape[0], -1))).astype(jnp.float32)


class GlobalPredictor(nn.Module):
    """[B, dim] -> [B, dim] linear predictor on the online side only (SPR)."""

    dim: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.dim, dtype=self.dtype)(x).astype(jnp.float32)


def cosine_distance(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """SPR's global loss per sample: ||p/|p| - t/|t|||^2 = 2 - 2 cos(p, t) (normalised MSE), with
    SPR's F.normalize(x, eps=1e-3): x / max(|x|, 1e-3) (src/models.py spr_loss)."""
    p = prediction / jnp.maximum(jnp.linalg.norm(prediction, axis=-1, keepdims=True), 1e-3)
    t = target / jnp.maximum(jnp.linalg.norm(target, axis=-1, keepdims=True), 1e-3)
    return jnp.sum(jnp.square(p - t), axis=-1)
