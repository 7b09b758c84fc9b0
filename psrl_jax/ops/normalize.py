"""Min-max normalisation of feature volumes (SPR's "renormalize").

SPR rescales each sample's latent to [0, 1] before its projection/prediction heads, and PSRL
compares min-max normalised volumes in the same way (Table 3, AAT row 5): the scale of an
encoder's output is then fixed, so similarity losses and correlation volumes cannot be
changed by merely growing or shrinking the features.
"""

import jax
import jax.numpy as jnp


def minmax_normalize(x: jax.Array, num_feature_dims: int = 3) -> jax.Array:
    """(x - min) / (max - min), with min and max taken per sample over the last
    `num_feature_dims` axes (e.g. [H, W, C]); all leading axes (batch, frames, ...) are kept,
    so a [B, F, H, W, C] volume with num_feature_dims=3 normalises every frame separately.
    SPR's renormalize exactly, except that a constant sample (max = min, where SPR divides by
    zero) maps to zeros."""
    if not 1 <= num_feature_dims <= x.ndim:
        raise ValueError(f"num_feature_dims={num_feature_dims} must be in [1, {x.ndim}] for shape {x.shape}")
    axes = tuple(range(x.ndim - num_feature_dims, x.ndim))
    lo = jnp.min(x, axis=axes, keepdims=True)
    hi = jnp.max(x, axis=axes, keepdims=True)
    spread = hi - lo
    return (x - lo) / jnp.where(spread > 0, spread, 1.0)
