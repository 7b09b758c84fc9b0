"""Correspondence estimation module of PSRL (Table 3, rows 4-22; DESIGN.md 1).

`CorrespondenceNet` predicts a dense correspondence (flow) map from a query feature map to a
target feature map of the same size. CAT then warps the query features by the finest flow
(`psrl_jax.ops.warp.warp`) to produce the transformed volume Z^{q,tr}; the module is trained only
through that warping loss (self-supervised, no flow labels).

Graph (NHWC; channel counts at width=1.0, Atari shapes for per-frame en3 maps of 7x7x64 and the
query's en2 map of 9x9x64):

  row  4    q_proj = Conv(32, 1x1)-BN-LReLU(query)                          7x7x32
  row  5    corr   = correlation(query, target)   all pairs: 7x7x49 / local: 7x7x(2d+1)^2
  row  6    conc0  = concat(q_proj, corr)
  rows 5-9  conv1 = Conv(256, 3)-BN-LReLU, conv2p, conv2, conv3p, conv3 = Conv(512, 3)-BN-LReLU
  row 10    correspondence3 = Conv(2, 3)(conv3)                             7x7x2
  rows 11-14 (level 1)  conc3 = concat(up(conv2), Deconv(256, 4, 2)-LReLU(conv3), up(flow3))
                        correspondence2 = up(flow3) + Conv(2, 3)(conc3)     14x14x2
  rows 15-18 (level 2)  conc2 = concat(up(conv1), Deconv(128, 4, 2)-LReLU(conc3), up(flow2))
                        correspondence1 = up(flow2) + Conv(2, 3)(conc2)     28x28x2
  rows 19-22 (level 3)  conc1 = concat(up(en2), Deconv(130, 4, 2)-LReLU(conc2), up(flow1))
                        correspondence0 = up(flow1) + Conv(2, 3)(conc1)     56x56x2

"up" is a bilinear resize to the level's size; a flow is resized with `resize_flow`, which also
rescales its values, because every flow is in pixel units (dx, dy) of its own resolution.
`flows_at` brings all scales to the feature-map size (CAT uses the finest one, resized).

Choices that are ours (the supplementary is silent on them):
  * `width` multiplies every hidden channel count (flow heads stay 2-channel), so tests and CPU
    demos run a narrow copy of the same graph; `refinement_levels` (0..3) truncates the
    coarse-to-fine decoder (0 = coarse head only).
  * The correlation volume is the cosine similarity of the L2-normalised query and target
    features, so its scale does not depend on the feature magnitude (which drifts during RL).
  * Residual refinement: each finer head predicts a correction added to the upsampled coarser
    flow, so the coarse estimate is already usable and finer heads start from it.
  * Flow heads have zero-initialised kernels and biases: the module starts as the identity warp.
    The heads' kernels still receive gradients through the warp (their inputs are non-zero), and
    after the first update the gradient reaches the rest of the network.
  * Convolutions followed by BN have no bias: BN's mean subtraction cancels it, so it would get
    exactly zero gradient (found by the test that every parameter trains).
  * BatchNorm statistics are those of the call's batch (no axis_name), so under `jax.vmap` over
    seeds each seed normalises its own batch. Train with `mutable=["batch_stats"]`.
  * Mixed precision (`dtype=jnp.bfloat16`): convolutions, the correlation and BatchNorm's output
    run in bfloat16; parameters, BatchNorm statistics (flax reduces in float32) and the flows
    (residual sums and resizing) stay float32, and the flows are returned in float32.
"""

import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psrl_jax.ops.conv import Conv
from psrl_jax.ops.correlation import correlation_all_pairs, correlation_local
from psrl_jax.ops.warp import resize_flow

_CORRELATIONS = ("all_pairs", "local")


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit vectors along channels; the eps guard keeps all-zero vectors (e.g. dead ReLU maps) at zero."""
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps * eps)


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of a feature map [N, h, w, C] to [N, height, width, C]."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="linear")


def flows_at(flows, height: int, width: int) -> tuple:
    """Resizes every flow of `flows` to [N, height, width, 2], values rescaled to pixels of that size."""
    return tuple(resize_flow(flow, height, width) for flow in flows)


class CorrespondenceNet(nn.Module):
    """Dense correspondence from a query map to a target map (Table 3, rows 4-22).

    Fields:
      width: multiplier on every hidden channel count (32, 256, 512, deconv 256/128/130).
      refinement_levels: number of x2 coarse-to-fine levels after the coarse head (0..3).
      correlation: "all_pairs" (small maps, Atari) or "local" (window of +-max_displacement).
      max_displacement: half-width of the local correlation window ("local" only).
      negative_slope: LeakyReLU slope.
      bn_momentum, bn_epsilon: BatchNorm settings (flax convention: momentum 0.9 = PyTorch 0.1).
      dtype: compute dtype of the layers (None: float32); see the module docstring.

    Call: `net.apply(variables, query, target, query_skip, train=...)` with query and target
    [N, h, w, C] and query_skip the query frame's previous encoder map [N, h', w', C'] (needed
    only when refinement_levels == 3). Returns the flows finest first:
    (correspondence_{3-L}, ..., correspondence3), each [N, h * 2^i, w * 2^i, 2] in pixels (dx, dy)
    of its own resolution, such that warp(query, flow) approximates target. Residual refinement
    (each level corrects the upsampled coarser flow) and zero-initialised heads are our choices.
    """

    width: float = 1.0
    refinement_levels: int = 3
    correlation: str = "all_pairs"
    max_displacement: int = 3
    negative_slope: float = 0.1
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = None

    def __post_init__(self):
        try:
            width_ok = not isinstance(self.width, bool) and math.isfinite(float(self.width)) and float(self.width) > 0
        except (TypeError, ValueError):
            width_ok = False
        if not width_ok:
            raise ValueError(f"width must be a finite number > 0, got {self.width!r}")
        if isinstance(self.refinement_levels, bool) or self.refinement_levels not in (0, 1, 2, 3):
            raise ValueError(f"refinement_levels must be one of 0, 1, 2, 3, got {self.refinement_levels!r}")
        if self.correlation not in _CORRELATIONS:
            raise ValueError(f"correlation must be one of {_CORRELATIONS}, got {self.correlation!r}")
        if (
            isinstance(self.max_displacement, bool)
            or not isinstance(self.max_displacement, numbers.Integral)
            or self.max_displacement < 0
        ):
            raise ValueError(f"max_displacement must be an integer >= 0, got {self.max_displacement!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if not self.bn_epsilon > 0:
            raise ValueError(f"bn_epsilon must be > 0, got {self.bn_epsilon!r}")
        super().__post_init__()

    def ch(self, channels: int) -> int:
        """Hidden channel count of Table 3 scaled by `width` (at least 1)."""
        return max(1, round(channels * self.width))

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        target: jax.Array,
        query_skip: jax.Array | None = None,
        *,
        train: bool,
        mask: jax.Array | None = None,
    ):
        """Flows, finest first. `mask` [N] (bool) restricts the BatchNorm batch statistics (train
        mode) to the pairs that count, so masked pairs (sequences past an episode end) cannot
        change the others' outputs; it must select at least one pair."""
        if query.ndim != 4 or query.shape != target.shape:
            raise ValueError(
                f"query and target must be [N, h, w, C] of the same shape, got {query.shape}, {target.shape}"
            )
        if self.refinement_levels == 3:
            if query_skip is None:
                raise ValueError(
                    "refinement_levels=3 needs query_skip (the query frame's previous encoder map, en2 in Table 3)"
                )
            if query_skip.ndim != 4 or query_skip.shape[0] != query.shape[0]:
                raise ValueError(f"query_skip must be [N, h', w', C'] with N={query.shape[0]}, got {query_skip.shape}")

        compute = jnp.float32 if self.dtype is None else self.dtype

        def conv_bn(x, channels, kernel, name):
            # No bias: BatchNorm's mean subtraction cancels it (its gradient is exactly zero).
            x = Conv(channels, (kernel, kernel), padding="SAME", use_bias=False, dtype=self.dtype, name=name)(x)
            # dtype is BatchNorm's output dtype; its statistics and running averages stay float32.
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                dtype=self.dtype,
                name=f"{name}_bn",
            )(x, mask=None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape))
            return nn.leaky_relu(x, self.negative_slope)

        def deconv(x, channels, name):
            x = nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME", dtype=self.dtype, name=name)(x)
            return nn.leaky_relu(x, self.negative_slope)

        def flow_head(x, name):  # the flow (and its residual sums) in float32
            return Conv(
                2,
                (3, 3),
                padding="SAME",
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                name=name,
            )(x).astype(jnp.float32)

        # Row 4: 1x1 projection of the query.
        q_proj = conv_bn(query, self.ch(32), 1, "proj")
        # Row 5: cosine correlation (ours). The ops divide the dot product by the channel count;
        # multiplying it back gives cosine similarities in [-1, 1].
        with jax.named_scope("correlation"):  # its own row in profiles (psrl_jax/profile_scopes.py)
            q_unit, t_unit = (_l2_normalize(x.astype(jnp.float32)).astype(compute) for x in (query, target))
            if self.correlation == "all_pairs":
                corr = correlation_all_pairs(q_unit, t_unit)
            else:
                corr = correlation_local(q_unit, t_unit, self.max_displacement)
            corr = corr * query.shape[-1]
        # Rows 6-9: the coarse encoder at h x w.
        conc0 = jnp.concatenate([q_proj, corr.astype(q_proj.dtype)], axis=-1)
        conv1 = conv_bn(conc0, self.ch(256), 3, "conv1")
        conv2p = conv_bn(conv1, self.ch(512), 3, "conv2p")
        conv2 = conv_bn(conv2p, self.ch(512), 3, "conv2")
        conv3p = conv_bn(conv2, self.ch(512), 3, "conv3p")
        conv3 = conv_bn(conv3p, self.ch(512), 3, "conv3")
        # Row 10: coarse flow.
        flow = flow_head(conv3, "flow3")
        flows = [flow]

        # Rows 11-22: each refinement level doubles the resolution and concatenates a skip map, the
        # transposed convolution of the level below and the upsampled flow; its head adds a residual flow.
        levels = (  # (skip map, deconv channels, deconv name, flow head name)
            (conv2, 256, "deconv3", "flow2"),  # rows 11-14 -> correspondence2 at 2h x 2w
            (conv1, 128, "deconv2", "flow1"),  # rows 15-18 -> correspondence1 at 4h x 4w
            (query_skip, 130, "deconv1", "flow0"),  # rows 19-22 -> correspondence0 at 8h x 8w
        )
        features, (height, width) = conv3, query.shape[1:3]
        for skip, channels, deconv_name, flow_name in levels[: self.refinement_levels]:
            height, width = 2 * height, 2 * width
            flow_up = resize_flow(flow, height, width)
            features = jnp.concatenate(
                [
                    _resize(skip.astype(compute), height, width),
                    deconv(features, self.ch(channels), deconv_name),
                    flow_up.astype(compute),
                ],
                axis=-1,
            )
            flow = flow_up + flow_head(features, flow_name)
            flows.append(flow)
        return tuple(reversed(flows))
