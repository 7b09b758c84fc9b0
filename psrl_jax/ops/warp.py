"""Bilinear warping of feature maps by a dense correspondence (flow) map (DESIGN.md 1, "Warp (CAT)").

warp(feat, flow)[b, y, x, :] = bilinear sample of feat[b] at (x + flow[b, y, x, 0], y + flow[b, y, x, 1]),
with zeros outside the map (the corners that fall outside contribute 0, as scipy's
`map_coordinates(order=1, mode="grid-constant")` and PyTorch's `grid_sample(padding_mode="zeros",
align_corners=True)` do). The result is continuous in the flow, so gradients flow to both
the features and the flow. Built on `jax.scipy.ndimage.map_coordinates`, always in at least float32
(lower-precision features or flows, e.g. from bfloat16 networks, are promoted), under the
profiler name scope "warp".

padding="border" (ours, config.psrl.warp_padding) samples the nearest edge value instead, as
`grid_sample(padding_mode="border")` does: a flow that points off the map then reads real features
rather than zeros. `outside_fraction` measures how much of a flow field points off the map.
"""

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

PADDINGS = {"zeros": "constant", "border": "nearest"}  # warp padding -> map_coordinates mode


def _sample_points(flow: jax.Array):
    """flow [..., H, W, 2] -> the (y, x) each output position samples, in pixels of the map."""
    height, width = flow.shape[-3:-1]
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=flow.dtype), jnp.arange(width, dtype=flow.dtype), indexing="ij")
    return ys + flow[..., 1], xs + flow[..., 0]


def _warp_one(feat: jax.Array, flow: jax.Array, mode: str) -> jax.Array:
    """feat [H, W, C], flow [H, W, 2] -> [H, W, C]."""
    coords = list(_sample_points(flow))
    # One batched gather over channels: the coordinates (and bilinear weights) are shared.
    sample = jax.vmap(lambda channel: map_coordinates(channel, coords, order=1, mode=mode, cval=0.0), -1, -1)
    return sample(feat)


def warp(feat: jax.Array, flow: jax.Array, padding: str = "zeros") -> jax.Array:
    """feat [B, H, W, C], flow [B, H, W, 2] in pixels (dx, dy) -> warped [B, H, W, C].

    Any extra leading axes (e.g. frames or steps) are folded into the batch, so one call
    warps a whole [B, F, H, W, C] volume. padding: "zeros" (DESIGN.md) or "border".
    """
    if feat.shape[:-1] != flow.shape[:-1] or flow.shape[-1] != 2:
        raise ValueError(f"feat {feat.shape} and flow {flow.shape} must share [..., H, W] and flow must end in 2")
    if padding not in PADDINGS:
        raise ValueError(f"warp padding must be one of {tuple(PADDINGS)}, got {padding!r}")
    dtype = jnp.promote_types(jnp.result_type(feat, flow), jnp.float32)
    with jax.named_scope("warp"):
        lead = feat.shape[:-3]
        flat_feat = feat.astype(dtype).reshape((-1,) + feat.shape[-3:])
        flat_flow = flow.astype(dtype).reshape((-1,) + flow.shape[-3:])
        out = jax.vmap(lambda f, w: _warp_one(f, w, PADDINGS[padding]))(flat_feat, flat_flow)
        return out.reshape(lead + out.shape[1:])


def outside_fraction(flow: jax.Array) -> jax.Array:
    """Fraction of the positions of flow [..., H, W, 2] whose sample point lies off the map, i.e.
    outside [0, W - 1] x [0, H - 1], where "zeros" padding reads (partly) zeros."""
    height, width = flow.shape[-3:-1]
    y, x = _sample_points(flow)
    off = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    return jnp.mean(off.astype(jnp.float32))


def resize_flow(flow: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinearly resizes a flow map [..., h, w, 2] to [..., height, width, 2] and rescales its
    values to pixels of the new resolution (dx by width / w, dy by height / h)."""
    h, w = flow.shape[-3], flow.shape[-2]
    if (h, w) == (height, width):
        return flow
    resized = jax.image.resize(flow, flow.shape[:-3] + (height, width, 2), method="linear")
    scale = jnp.asarray([width / w, height / h], flow.dtype)
    return resized * scale
