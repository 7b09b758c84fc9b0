"""Flow visualisation helpers (psrl_jax/analysis/flow_vis.py)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import rgb_to_hsv  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from psrl_jax.analysis.flow_vis import color_wheel, draw_flow_arrows, flow_to_rgb  # noqa: E402


def _hsv(rgb):
    return rgb_to_hsv(rgb.astype(np.float64) / 255.0)


def _constant_flow(dx, dy, height=5, width=6):
    return np.broadcast_to(np.array([dx, dy], np.float64), (height, width, 2)).copy()


def test_shape_dtype_and_zero_flow_is_white():
    rgb = flow_to_rgb(np.zeros((5, 6, 2)))
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == 255)


def test_opposite_directions_have_opposite_hues():
    right = _hsv(flow_to_rgb(_constant_flow(2.0, 0.0)))
    left = _hsv(flow_to_rgb(_constant_flow(-2.0, 0.0)))
    down = _hsv(flow_to_rgb(_constant_flow(0.0, 2.0)))
    assert not np.allclose(right[..., 0], left[..., 0])
    # Hue is on a circle: right and left are half a turn apart, down a quarter turn from right.
    np.testing.assert_allclose(np.mod(left[..., 0] - right[..., 0], 1.0), 0.5, atol=0.01)
    np.testing.assert_allclose(np.mod(down[..., 0] - right[..., 0], 1.0), 0.25, atol=0.01)
    # Right is pure red.
    np.testing.assert_array_equal(flow_to_rgb(_constant_flow(2.0, 0.0))[0, 0], [255, 0, 0])


def test_saturation_follows_magnitude_and_clips():
    flow = np.zeros((1, 4, 2))
    flow[0, :, 0] = [0.0, 1.0, 2.0, 8.0]
    sat = _hsv(flow_to_rgb(flow, max_magnitude=2.0))[0, :, 1]
    np.testing.assert_allclose(sat, [0.0, 0.5, 1.0, 1.0], atol=0.01)
    # Default max_magnitude is the map's largest magnitude: only the largest vector saturates.
    sat_default = _hsv(flow_to_rgb(flow))[0, :, 1]
    np.testing.assert_allclose(sat_default, [0.0, 0.125, 0.25, 1.0], atol=0.01)
    # Values are 1 everywhere.
    np.testing.assert_allclose(_hsv(flow_to_rgb(flow))[..., 2], 1.0)


def test_zero_max_magnitude_does_not_divide_by_zero():
    with np.errstate(all="raise"):
        zero = flow_to_rgb(np.zeros((3, 3, 2)), max_magnitude=0.0)
        moving = flow_to_rgb(_constant_flow(1.0, 1.0, 3, 3), max_magnitude=0.0)
        default_zero = flow_to_rgb(np.zeros((3, 3, 2)))
    assert np.all(zero == 255) and np.all(default_zero == 255)
    np.testing.assert_allclose(_hsv(moving)[..., 1], 1.0)


def test_bad_flow_shape_raises():
    with pytest.raises(ValueError):
        flow_to_rgb(np.zeros((4, 4, 3)))


def test_color_wheel():
    size = 32
    wheel = color_wheel(size)
    assert wheel.shape == (size, size, 3) and wheel.dtype == np.uint8
    assert np.all(wheel[0, 0] == 255)  # corner is outside the disc
    hsv = _hsv(wheel)
    mid = size // 2
    assert hsv[mid, mid, 1] < 0.1  # centre is (nearly) white
    assert hsv[mid, size - 2, 1] > 0.8  # right rim is saturated ...
    assert abs(hsv[mid, size - 2, 0] - 0.0) < 0.05 or abs(hsv[mid, size - 2, 0] - 1.0) < 0.05  # ... and red


def test_draw_flow_arrows_scales_to_image():
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(7, 7, 2))
    fig, ax = plt.subplots()
    try:
        ax.imshow(np.zeros((56, 56, 3)))
        before = len(ax.collections)
        quiver = draw_flow_arrows(ax, flow, step=1, scale_to=(56, 56), color="k")
        quivers = [c for c in ax.collections if isinstance(c, Quiver)]
        assert len(ax.collections) == before + 1 and quivers == [quiver]
        np.testing.assert_allclose(np.ravel(quiver.U), flow[..., 0].ravel() * 8)
        np.testing.assert_allclose(np.ravel(quiver.V), flow[..., 1].ravel() * 8)
        # Arrow tails sit at the flow cells' centres in image pixels: 3.5, 11.5, ...
        np.testing.assert_allclose(np.unique(quiver.X), 8 * np.arange(7) + 3.5)
        np.testing.assert_allclose(np.unique(quiver.Y), 8 * np.arange(7) + 3.5)
        fig.canvas.draw()  # the quiver must render
    finally:
        plt.close(fig)


def test_draw_flow_arrows_step_and_non_square():
    flow = np.random.default_rng(1).normal(size=(6, 9, 2))
    fig, ax = plt.subplots()
    try:
        quiver = draw_flow_arrows(ax, flow, step=2, scale_to=(12, 27))
        sub = flow[::2, ::2]
        assert quiver.N == sub.shape[0] * sub.shape[1]
        np.testing.assert_allclose(np.ravel(quiver.U), sub[..., 0].ravel() * 3)
        np.testing.assert_allclose(np.ravel(quiver.V), sub[..., 1].ravel() * 2)
        # Without scale_to the arrows are in flow-map pixels, tails at the integer grid.
        plain = draw_flow_arrows(ax, flow)
        np.testing.assert_allclose(np.ravel(plain.U), flow[..., 0].ravel())
        np.testing.assert_allclose(np.unique(plain.X), np.arange(9))
    finally:
        plt.close(fig)
