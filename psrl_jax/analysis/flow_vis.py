"""Drawing dense correspondence (flow) maps, as in the PSRL supplementary's Figure 1.

Flow maps are [H, W, 2] arrays of (dx, dy) in pixels of the flow map, image convention
(x to the right, y downwards). `flow_to_rgb` uses the usual colour-wheel coding (hue =
direction, saturation = magnitude, white = no motion), `color_wheel` draws its legend and
`draw_flow_arrows` overlays the vectors on an image shown with `imshow`.
"""

import numpy as np
from matplotlib.colors import hsv_to_rgb


def _as_flow(flow) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [H, W, 2], got {flow.shape}")
    return flow


def flow_to_rgb(flow, max_magnitude: float | None = None) -> np.ndarray:
    """[H, W, 2] flow -> uint8 [H, W, 3] colour-wheel image.

    Hue is the direction atan2(dy, dx) (right = red, left = cyan), saturation the magnitude
    divided by `max_magnitude` (default: the map's largest magnitude) clipped to 1, value 1,
    so zero flow is white and the strongest motion is fully saturated.
    """
    flow = _as_flow(flow)
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max()) if magnitude.size else 0.0
    # A zero (or all-zero) scale would divide by zero: treat it as "any motion saturates".
    scale = max(float(max_magnitude), 1e-12)
    hue = np.mod(np.arctan2(dy, dx) / (2.0 * np.pi), 1.0)
    saturation = np.clip(magnitude / scale, 0.0, 1.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1)
    return np.round(hsv_to_rgb(hsv) * 255.0).astype(np.uint8)


def color_wheel(size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3] legend: the colour of every direction and magnitude, the disc's
    rim being `max_magnitude`; outside the disc is white."""
    centre = (size - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    radial = np.stack([xs - centre, ys - centre], axis=-1)  # (dx, dy) pointing away from the centre
    radius = size / 2.0
    wheel = flow_to_rgb(radial, max_magnitude=radius)
    wheel[np.hypot(radial[..., 0], radial[..., 1]) > radius] = 255
    return wheel


def draw_flow_arrows(ax, flow, step: int = 1, scale_to: tuple[int, int] | None = None, color="k"):
    """Quiver of `flow` [h, w, 2] on `ax` at every `step`-th flow-map cell; returns the Quiver.

    When the axes show an image of another size, `scale_to=(H_img, W_img)` places each arrow at
    its cell's centre in image pixels (half-pixel-centre convention, as `jax.image.resize` and
    `resize_flow` use) and scales (dx, dy) to image pixels. angles="xy", scale_units="xy" and
    scale=1 make an arrow span exactly its displacement in data coordinates; `imshow` puts y
    downwards, matching the flow's dy.
    """
    flow = _as_flow(flow)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    height, width = flow.shape[:2]
    img_h, img_w = (height, width) if scale_to is None else scale_to
    sy, sx = img_h / height, img_w / width
    rows, cols = np.arange(0, height, step), np.arange(0, width, step)
    grid_y, grid_x = np.meshgrid(rows, cols, indexing="ij")
    sub = flow[::step, ::step]
    return ax.quiver(
        (grid_x + 0.5) * sx - 0.5,
        (grid_y + 0.5) * sy - 0.5,
        sub[..., 0] * sx,
        sub[..., 1] * sy,
        color=color,
        angles="xy",
        scale_units="xy",
        scale=1,
    )
