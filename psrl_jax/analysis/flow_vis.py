"""Drawing dense correspondence (flow) maps, as in the PSRL supplementary's Figure 1.

Flow maps are [H, W, 2] arrays of (dx, dy) in pixels of the flow map, image convention
(x to the right, y downwards). `flow_to_rgb` uses the usual colour-wheel coding (hue =
direction, saturation = magnitude, white = no motion), `color_wheel` draws its legend and
`draw_flow_arrows` overlays the vectors on an image shown with `imshow`, and
`plot_correspondence_figure` assembles the source / target / colour wheel / arrows figure that
launch/visualize.py writes; `pick_replay_samples` chooses what it draws. Nothing here imports JAX.
"""

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class CorrespondenceRow:
    """One row of `plot_correspondence_figure`.

    label: row label, e.g. "sample 0 external (frame 3 of o_k -> frame 3 of o_k+1)".
    source, target: uint8 frames, [H, W] gray (Atari) or [H, W, 3] RGB (DMC); the flow maps
    target positions into the source.
    flow_native: [h, w, 2] the finest flow at its own resolution, in its own pixels.
    flow_feature: [h7, w7, 2] the same flow resized to the feature map, in feature-map pixels.
    """

    label: str
    source: np.ndarray
    target: np.ndarray
    flow_native: np.ndarray
    flow_feature: np.ndarray


def upscale_nearest(image, height: int, width: int) -> np.ndarray:
    """[h, w, ...] -> [height, width, ...] by nearest-neighbour (each output pixel takes the
    cell its centre falls in), for showing a coarse map over a frame."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return image[rows][:, cols]


def _nice_gain(max_arrow: float, target: float) -> float:
    """1 when the longest arrow reaches `target` already, else the 1-2-5 number that brings it near."""
    if max_arrow <= 0 or max_arrow >= target:
        return 1.0
    raw = target / max_arrow
    exponent = 10.0 ** np.floor(np.log10(raw))
    return float(max(m * exponent for m in (1.0, 2.0, 5.0, 10.0) if m * exponent <= raw))


def _row_field(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def plot_correspondence_figure(rows, path: str, title: str, caption: str | None = None, dpi: int = 120) -> str:
    """PSRL supplementary Fig. 1 style figure: per row (a) source frame, (b) target frame,
    (c) the native-resolution flow as colour wheel (nearest-upscaled to the frame, legend inset),
    (d) the source frame with the feature-map flow as arrows. Rows are `CorrespondenceRow`s or
    dicts with the same keys. Writes a PNG to `path` (no pyplot state, no JAX) and returns it.

    The flow is a backward warp (warp(query, flow) ~ target): the vector at a target position p
    points to p + flow(p), the source location whose content lands on p. Arrows that would be
    shorter than about half a feature cell are drawn longer by a 1-2-5 gain stated in the
    panel's title; the colour wheel's rim is the row's largest native magnitude, also stated.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise ValueError("plot_correspondence_figure needs at least one row")
    n = len(rows)
    fig = Figure(figsize=(12.0, 3.0 * n + 1.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 4, squeeze=False)
    wheel = color_wheel(65)
    for i, row in enumerate(rows):
        source = np.asarray(_row_field(row, "source"))
        target = np.asarray(_row_field(row, "target"))
        native = _as_flow(_row_field(row, "flow_native"))
        feature = _as_flow(_row_field(row, "flow_feature"))
        rgb = source.ndim == 3 and source.shape[-1] == 3
        if not (source.ndim == 2 or rgb) or source.shape != target.shape:
            raise ValueError(
                f"source and target must be [H, W] or [H, W, 3] of one shape, got {source.shape}, {target.shape}"
            )
        height, width = source.shape[:2]
        ax_src, ax_tgt, ax_flow, ax_arrow = axes[i]
        frame_style = (
            {"interpolation": "nearest"}
            if rgb
            else {"cmap": "gray", "vmin": 0, "vmax": 255, "interpolation": "nearest"}
        )
        ax_src.imshow(source, **frame_style)
        ax_src.set_title("(a) source", fontsize=9)
        ax_src.set_ylabel(_row_field(row, "label"), fontsize=8)
        ax_tgt.imshow(target, **frame_style)
        ax_tgt.set_title("(b) target", fontsize=9)

        rim = float(np.hypot(native[..., 0], native[..., 1]).max())
        ax_flow.imshow(upscale_nearest(flow_to_rgb(native, rim), height, width), interpolation="nearest")
        ax_flow.set_title(
            f"(c) flow {native.shape[0]}x{native.shape[1]}, rim = {rim:.3g} px",
            fontsize=9,
        )
        legend = ax_flow.inset_axes([0.74, 0.74, 0.25, 0.25])
        legend.imshow(wheel, interpolation="bilinear")
        legend.set_axis_off()

        ax_arrow.imshow(source, **frame_style)
        cell = max(height / feature.shape[0], width / feature.shape[1])
        longest = float(np.hypot(feature[..., 0], feature[..., 1]).max()) * cell  # input pixels
        gain = _nice_gain(longest, 0.5 * cell)
        draw_flow_arrows(ax_arrow, feature * gain, scale_to=(height, width), color="tab:red")
        ax_arrow.set_xlim(-0.5, width - 0.5)
        ax_arrow.set_ylim(height - 0.5, -0.5)
        gain_text = "" if gain == 1.0 else f", arrows x{gain:g}"
        ax_arrow.set_title(f"(d) {feature.shape[0]}x{feature.shape[1]} flow{gain_text}", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0.0, 0.05 if caption else 0.0, 1.0, 0.97), h_pad=1.5)
    fig.savefig(path, dpi=dpi)
    return path


def pick_replay_samples(batch, frame: int, count: int) -> np.ndarray:
    """Indices into a replayed `batch` (a SequenceBatch of NumPy arrays) of `count` distinct replay
    items, preferring valid ones whose first future step is in the same episode (future_mask[:, 0])
    and whose drawn frames (first and last of o_k, frame `frame` of o_k+1) are not blank padding.
    Within each preference level the picks are spread evenly over the replay positions: the sum
    tree draws a batch in position order, so the first ones would all be the oldest data."""
    valid = batch.valid > 0
    in_episode = batch.future_mask[:, 0] > 0 if batch.future_mask.shape[1] else np.zeros_like(valid)
    lit = lambda frames: frames.reshape(frames.shape[0], -1).max(axis=1) > 0  # gray [N, H, W] or RGB [N, H, W, 3]
    nonblank = lit(batch.obs[:, 0]) & lit(batch.obs[:, -1])
    if batch.future_obs.shape[1]:
        nonblank &= lit(batch.future_obs[:, 0, frame])
    score = 4 * valid + 2 * (valid & in_episode) + nonblank
    positions = np.asarray(batch.indices).astype(np.int64)
    chosen, seen = [], set()
    for level in sorted(set(score.tolist()), reverse=True):
        group = {}  # replay position -> first pool index holding it, for the distinct positions of this level
        for i in np.flatnonzero(score == level):
            if int(positions[i]) not in seen:
                group.setdefault(int(positions[i]), int(i))
        ordered = [group[p] for p in sorted(group)]
        take = min(count - len(chosen), len(ordered))
        # take <= len(ordered): steps of at least 1, so the rounded positions are distinct.
        for k in np.round(np.linspace(0, len(ordered) - 1, take)).astype(np.int64):
            chosen.append(ordered[k])
            seen.add(int(positions[ordered[k]]))
        if len(chosen) == count:
            break
    return np.asarray(chosen)
