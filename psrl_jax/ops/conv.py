"""`lax.conv_general_dilated` with a kernel gradient that XLA:CPU runs fast inside loops.

Inside a `while` loop (a rolled `lax.scan`: the fused actor-learner loop, rolled update scans)
XLA:CPU leaves the kernel-gradient convolution of a strided conv in a non-canonical form
(dim_labels f01b_i01o->01bf) that it runs 15-25x slower than the same convolution outside the
loop, where its ConvCanonicalization rewrites it for Eigen (measured on the 2-core CPU, JAX 0.10.2:
the Atari encoder's forward + backward 298 ms per step in a loop vs 14 ms unrolled). Here the
kernel gradient is written in that canonical form directly, so it runs at the unrolled speed in
both places: for y = conv(x, w, stride s), dW[i, j, c, o] = sum_{b,p,q} x[b, s p + i, s q + j, c]
dy[b, p, q, o] is a stride-1 convolution of x^T [C, H, W, B] ("batch" = input channels) with dy^T
[Ho, Wo, B, O] dilated by s as the kernel.

Used only while `tracing_rolled_loop()` is active (the trainer's fused chunk), only on the CPU
backend (GPU convolutions go to cuDNN, which has its own kernel-gradient algorithms), only for
NHWC/HWIO convolutions without dilation or groups; padded ones (the correspondence module's and the
AAT's SAME convs, stride 1) as explicit pad + VALID conv. In a rolled loop XLA's own kernel gradient
of such a padded conv ran 30x slower (a 3x3 conv over a [32, 11, 11, 64] batch: 128 vs 4.3 ms per
step rolled vs unrolled; 5.2 ms here). Everywhere else, the default path included (updates unrolled
on the CPU), it is lax.conv_general_dilated unchanged: there this module did not pay (full updates
of sac, rainbow and sac_psrl ran 0.94x, 0.97x and 0.91x the time with plain lax convolutions, AMD
EPYC 2 cores, docs/BENCHMARKS.md). PSRL_JAX_LAX_CONV=1 in the environment turns it off in rolled
loops too. Flax's nn.Conv takes it as `conv_general_dilated=`; `Conv` below is nn.Conv with it.
"""

import contextlib
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# PSRL_JAX_LAX_CONV=1 uses lax.conv_general_dilated everywhere (to measure what this module changes).
_FORCE_LAX = os.environ.get("PSRL_JAX_LAX_CONV", "") not in ("", "0")


_tracing_rolled_loop = False


@contextlib.contextmanager
def tracing_rolled_loop():
    """Trace the body of a rolled loop in here: padded convolutions then take the fast kernel
    gradient too (module docstring). Read at trace time: wrap the lowering of a freshly jitted
    function (JAX reuses a function's cached trace, taken with or without this flag)."""
    global _tracing_rolled_loop
    previous, _tracing_rolled_loop = _tracing_rolled_loop, True
    try:
        yield
    finally:
        _tracing_rolled_loop = previous


def _conv(x, w, strides, precision, preferred_element_type):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        "VALID",
        dimension_numbers=_NHWC,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def kernel_gradient(x, dy, kernel_hw, strides, precision=None):
    """dL/dW [kh, kw, C, O] of y = VALID conv(x [B, H, W, C], W, strides) given dy [B, Ho, Wo, O]."""
    x_t = jnp.transpose(x, (3, 1, 2, 0))  # [C, H, W, B]: input channels as the batch
    dy_t = jnp.transpose(dy, (1, 2, 0, 3)).astype(x.dtype)  # [Ho, Wo, B, O]: dy as the kernel
    out = lax.conv_general_dilated(
        x_t, dy_t, (1, 1), "VALID", rhs_dilation=strides, dimension_numbers=_NHWC, precision=precision
    )  # [C, H - s (Ho - 1), W - s (Wo - 1), O]: the first kh x kw positions are the kernel's
    return jnp.transpose(out[:, : kernel_hw[0], : kernel_hw[1], :], (1, 2, 0, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _valid_conv(x, w, strides, precision, preferred_element_type):
    return _conv(x, w, strides, precision, preferred_element_type)


def _valid_conv_fwd(x, w, strides, precision, preferred_element_type):
    return _conv(x, w, strides, precision, preferred_element_type), (x, w)


def _valid_conv_bwd(strides, precision, preferred_element_type, residuals, dy):
    x, w = residuals
    # The input gradient is XLA's own transposed convolution (already fast in loops).
    _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, strides, precision, preferred_element_type), x)
    (dx,) = input_vjp(dy)
    dw = kernel_gradient(x, dy, w.shape[:2], strides, precision).astype(w.dtype)
    return dx, dw


_valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """Drop-in for lax.conv_general_dilated (same arguments, same values and gradients)."""
    undilated = all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
    # Flax passes ConvDimensionNumbers, users may pass strings: compare the normalised forms.
    nhwc = (
        dimension_numbers is not None
        and lhs.ndim == 4
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    valid = all(tuple(p) == (0, 0) for p in padding)
    if (
        _FORCE_LAX
        or not _tracing_rolled_loop
        or jax.default_backend() != "cpu"
        or not all(lo >= 0 and hi >= 0 for lo, hi in padding)
        or not undilated
        or not nhwc
        or feature_group_count != 1
        or batch_group_count != 1
    ):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    if not valid:
        lhs = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    strides = tuple(int(s) for s in window_strides)
    return _valid_conv(lhs, rhs, strides, precision, preferred_element_type)


def Conv(*args, **kwargs):  # noqa: N802 - a drop-in for the nn.Conv class
    """flax nn.Conv with the convolution above; same parameters, names and values as nn.Conv."""
    return nn.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)
