"""psrl_jax/ops/conv.py: the same convolution, values and gradients as lax / nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from psrl_jax.ops.conv import Conv, conv_general_dilated, kernel_gradient, tracing_rolled_loop

NHWC = ("NHWC", "HWIO", "NHWC")


def numpy_kernel_gradient(x, dy, kh, kw, stride):
    """dW[i, j, c, o] = sum_{b, p, q} x[b, s p + i, s q + j, c] dy[b, p, q, o], by loops over (i, j)."""
    _, ho, wo, _ = dy.shape
    dw = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
            dw[i, j] = np.einsum("bpqc,bpqo->co", patch, dy)
    return dw


@pytest.mark.parametrize("kernel,stride,size", [(8, 4, 84), (4, 2, 20), (3, 1, 9), (3, 2, 13)])
def test_kernel_gradient_matches_numpy(kernel, stride, size):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((3, size, size, 4)).astype(np.float32)
    out = (size - kernel) // stride + 1
    dy = rng.standard_normal((3, out, out, 5)).astype(np.float32)
    got = kernel_gradient(jnp.asarray(x), jnp.asarray(dy), (kernel, kernel), (stride, stride))
    np.testing.assert_allclose(got, numpy_kernel_gradient(x, dy, kernel, kernel, stride), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kernel,stride,padding,dtype",
    [
        (8, 4, "VALID", jnp.float32),
        (3, 1, "SAME", jnp.float32),
        (4, 2, "SAME", jnp.float32),
        (3, 2, ((1, 2), (0, 1)), jnp.float32),
        (3, 1, "VALID", jnp.bfloat16),
    ],
)
def test_values_and_gradients_equal_lax(kernel, stride, padding, dtype):
    key = jax.random.PRNGKey(kernel + stride)
    x = jax.random.normal(key, (2, 21, 21, 3)).astype(dtype)
    w = (0.2 * jax.random.normal(jax.random.fold_in(key, 1), (kernel, kernel, 3, 6))).astype(dtype)

    def loss(conv):
        def f(x, w):
            y = conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)
            return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

        return jax.grad(f, argnums=(0, 1), has_aux=True)

    # Inside tracing_rolled_loop every case takes our path (outside it, every one is lax itself).
    with tracing_rolled_loop():
        forward = lambda x, w: conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)  # noqa: E731
        assert "custom_vjp" in str(jax.make_jaxpr(forward)(x, w))
        (dx, dw), y = loss(conv_general_dilated)(x, w)
    (dx_ref, dw_ref), y_ref = loss(lax.conv_general_dilated)(x, w)
    assert y.dtype == y_ref.dtype and dw.dtype == w.dtype and dx.dtype == x.dtype
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        np.testing.assert_allclose(np.float32(got), np.float32(ref), rtol=tol, atol=tol)


def test_dilated_convolution_falls_back_to_lax():
    x = jnp.ones((1, 9, 9, 2))
    w = jnp.arange(18.0).reshape(3, 3, 2, 1)
    kwargs = dict(rhs_dilation=(2, 2), dimension_numbers=NHWC)
    np.testing.assert_array_equal(
        conv_general_dilated(x, w, (1, 1), "VALID", **kwargs), lax.conv_general_dilated(x, w, (1, 1), "VALID", **kwargs)
    )


def test_conv_module_is_nn_conv_with_the_same_parameters_and_outputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 3))

    class Net(nn.Module):
        conv: object

        @nn.compact
        def __call__(self, x):
            x = self.conv(8, (3, 3), (2, 2), padding="VALID")(x)
            return self.conv(4, (3, 3), padding="SAME", name="head")(x)

    ours, ref = Net(Conv), Net(nn.Conv)
    params = ours.init(jax.random.PRNGKey(1), x)
    ref_params = ref.init(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)  # names: Conv_0, head
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kernel,stride,padding", [(8, 4, "VALID"), (3, 1, "SAME"), (4, 2, "SAME"), (3, 2, ((1, 2), (0, 1)))]
)
def test_convolutions_take_the_fast_gradient_only_while_tracing_a_rolled_loop(kernel, stride, padding):
    key = jax.random.PRNGKey(kernel * stride)
    x = jax.random.normal(key, (2, 15, 15, 3))
    w = 0.2 * jax.random.normal(jax.random.fold_in(key, 1), (kernel, kernel, 3, 6))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)))

    # A fresh function per trace: JAX caches traces by function, and the flag is read while tracing.
    assert "custom_vjp" not in str(jax.make_jaxpr(loss(conv_general_dilated))(x, w))  # XLA's own conv
    with tracing_rolled_loop():
        assert "custom_vjp" in str(jax.make_jaxpr(loss(conv_general_dilated))(x, w))  # pad + our VALID conv
        got = jax.jit(jax.grad(loss(conv_general_dilated), argnums=(0, 1)))(x, w)
    ref = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(x, w)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
