"""Flow visualisation helpers (psrl_jax/analysis/flow_vis.py)."""

import os
import subprocess
import sys
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import rgb_to_hsv  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from psrl_jax.analysis.flow_vis import (  # noqa: E402
    CorrespondenceRow,
    color_wheel,
    draw_flow_arrows,
    flow_to_rgb,
    pick_replay_samples,
    plot_correspondence_figure,
    upscale_nearest,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _synthetic_rows():
    """A textured frame, the same frame shifted, a rotating native flow and a small feature flow."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:84, 0:84]
    source = ((np.sin(xs / 5.0) + np.cos(ys / 7.0) + 2) * 60 + rng.integers(0, 10, (84, 84))).astype(np.uint8)
    target = np.roll(source, (2, 3), axis=(0, 1))
    g = np.arange(14) - 6.5
    native = np.stack(np.meshgrid(g, g, indexing="xy"), -1)[..., ::-1] * np.array([-1.0, 1.0])  # rotation
    feature = np.full((7, 7, 2), 0.05)  # short: drawn with a gain
    return [
        CorrespondenceRow("sample 0 external", source, target, native, feature),
        {
            "label": "sample 0 internal",
            "source": target,
            "target": source,
            "flow_native": -native,
            "flow_feature": rng.normal(size=(7, 7, 2)),
        },
    ]


def test_upscale_nearest():
    image = np.arange(6).reshape(2, 3)
    up = upscale_nearest(image, 4, 6)
    assert up.shape == (4, 6)
    np.testing.assert_array_equal(up[:2, :2], 0)
    np.testing.assert_array_equal(up[2:, 4:], 5)
    assert upscale_nearest(np.zeros((14, 14, 3)), 84, 84).shape == (84, 84, 3)
    assert upscale_nearest(np.zeros((7, 7, 3)), 84, 80).shape == (84, 80, 3)  # not a multiple


def test_plot_correspondence_figure_writes_a_readable_png(tmp_path):
    path = str(tmp_path / "fig.png")
    assert plot_correspondence_figure(_synthetic_rows(), path, "synthetic", caption="a caption", dpi=60) == path
    image = mpimg.imread(path)
    # 12 x (3 * rows + 1.2) inches at 60 dpi.
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert abs(image.shape[1] - 12 * 60) <= 4 and abs(image.shape[0] - (3 * 2 + 1.2) * 60) <= 4
    rgb = image[..., :3]
    assert rgb.std() > 0.1
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100  # gray frames, colour-wheel flow, legend, arrows
    saturated = rgb.max(-1) - rgb.min(-1) > 0.5  # the colour wheel and the arrows are coloured
    assert saturated.mean() > 0.01


def test_plot_correspondence_figure_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError):
        plot_correspondence_figure([], str(tmp_path / "x.png"), "empty")
    row = _synthetic_rows()[0]
    bad = CorrespondenceRow(row.label, row.source, row.target[:40], row.flow_native, row.flow_feature)
    with pytest.raises(ValueError):
        plot_correspondence_figure([bad], str(tmp_path / "x.png"), "bad")


def test_plot_correspondence_figure_draws_rgb_frames(tmp_path):
    """DMC frames are RGB [H, W, 3]: drawn in their colours (a pure red source shows up red)."""
    rows = _synthetic_rows()
    red = np.zeros((84, 84, 3), np.uint8)
    red[..., 0] = 255
    row = CorrespondenceRow("rgb", red, red, rows[0].flow_native, rows[0].flow_feature)
    path = str(tmp_path / "rgb.png")
    plot_correspondence_figure([row], path, "rgb", dpi=60)
    rgb = mpimg.imread(path)[..., :3]
    pure_red = (rgb[..., 0] > 0.95) & (rgb[..., 1] < 0.05) & (rgb[..., 2] < 0.05)
    assert pure_red.mean() > 0.05  # panels (a) and (b) at least
    gray_rows = [CorrespondenceRow("gray", red[..., 0], red[..., 0], rows[0].flow_native, rows[0].flow_feature)]
    plot_correspondence_figure(gray_rows, path, "gray", dpi=60)
    rgb = mpimg.imread(path)[..., :3]
    assert ((rgb[..., 0] > 0.95) & (rgb[..., 1] < 0.05) & (rgb[..., 2] < 0.05)).mean() < 0.01  # gray: white, not red
    rgba = np.zeros((84, 84, 4), np.uint8)
    bad = CorrespondenceRow("rgba", rgba, rgba, rows[0].flow_native, rows[0].flow_feature)
    with pytest.raises(ValueError):
        plot_correspondence_figure([bad], path, "rgba")


def _replayed(positions, valid=None, in_episode=None, blank=(), rgb=False):
    """A stand-in SequenceBatch of NumPy arrays: F = 3 frames of o_k, K = 1 future step."""
    n = len(positions)
    frame = (8, 8, 3) if rgb else (8, 8)
    obs = np.full((n, 3, *frame), 100, np.uint8)
    future_obs = np.full((n, 1, 3, *frame), 100, np.uint8)
    for i in blank:
        obs[i, 0] = 0
    ones = np.ones(n, np.float32)
    return types.SimpleNamespace(
        indices=np.asarray(positions),
        valid=ones if valid is None else np.asarray(valid, np.float32),
        future_mask=(ones if in_episode is None else np.asarray(in_episode, np.float32))[:, None],
        obs=obs,
        future_obs=future_obs,
    )


@pytest.mark.parametrize("rgb", [False, True])
def test_pick_replay_samples_spreads_over_the_buffer(rgb):
    # 20 good items in position order (as the sum tree draws them): the first, middle and last.
    batch = _replayed(np.arange(100, 120), rgb=rgb)
    chosen = pick_replay_samples(batch, frame=2, count=3)
    np.testing.assert_array_equal(batch.indices[chosen], [100, 110, 119])


def test_pick_replay_samples_prefers_valid_in_episode_nonblank_distinct():
    positions = [5, 5, 6, 7, 8, 9]
    batch = _replayed(positions, valid=[1, 1, 0, 1, 1, 1], in_episode=[1, 1, 1, 0, 1, 1], blank=[4])
    # Only positions 5 (twice) and 9 are valid, in the episode and lit; then 8 (blank), then 7
    # (episode ended), then the invalid 6.
    assert list(batch.indices[pick_replay_samples(batch, 2, 2)]) == [5, 9]
    assert list(batch.indices[pick_replay_samples(batch, 2, 4)]) == [5, 9, 8, 7]
    assert sorted(batch.indices[pick_replay_samples(batch, 2, 10)]) == [5, 6, 7, 8, 9]  # distinct only


def test_flow_vis_does_not_import_jax():
    code = "import sys, psrl_jax.analysis.flow_vis; assert 'jax' not in sys.modules, 'flow_vis imported jax'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
