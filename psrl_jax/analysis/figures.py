"""The report's figures (PNG, matplotlib Agg). rliable draws the interval and probability plots."""

import math

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_mean_band(ax, curves: list, color: str, label: str, every_seed: bool = False) -> np.ndarray:
    """The mean over seeds at each step (± std shaded) of per-seed curves [[(step, value), ...], ...];
    `every_seed`: only the steps every seed reached. Returns the steps drawn (none: nothing drawn)."""
    by_step = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(s for s, v in by_step.items() if not every_seed or len(v) == len(curves)))
    if len(steps):
        mean = np.array([np.mean(by_step[s]) for s in steps])
        std = np.array([np.std(by_step[s]) for s in steps])
        ax.plot(steps, mean, marker="o", markersize=3, color=color, label=label)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    return steps


def published_band(ax, curve: list, label: str, up_to: float | None = None) -> None:
    """A published curve [(step, mean, std, ...), ...] as a dashed grey line with its ± std band, up to
    `up_to` (2% slack; None: the whole curve)."""
    x, mean, std = np.array([p[:3] for p in curve], dtype=np.float64).T
    shown = x <= up_to * 1.02 if up_to is not None else np.ones_like(x, bool)
    ax.plot(x[shown], mean[shown], "--", color="0.3", linewidth=1, label=label)
    ax.fill_between(x[shown], mean[shown] - std[shown], mean[shown] + std[shown], color="0.5", alpha=0.15)


def learning_curves(
    entries: dict,
    path: str,
    published_points: dict,
    xlabel: str,
    published_curves: dict | None = None,
    runs_range_only: bool = False,
) -> None:
    """One panel per game/task; per method the mean evaluation return over the seeds evaluated at
    each step (shaded ± std), published scores as markers at their budget, and published curves
    ({env: {name: [(step, mean, std, ...), ...]}}) as dashed grey lines with their ± std band, up to
    the panel's last step (the whole curve where no run has points). `runs_range_only`: published
    markers beyond the runs' last step are left out, so the x axis is the budget the runs reach."""
    plt = pyplot()
    domain = next(iter(entries))[0]  # entries are all Atari or all DMC
    envs = sorted({key[2] for key in entries})
    methods = sorted({key[1] for key in entries})
    cols = min(4, len(envs))
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs, strict=False):
        for i, method in enumerate(methods):
            entry = entries.get((domain, method, env))
            if entry is None:
                continue
            curves = [seed.curve() for seed in entry.seeds.values()]
            seed_mean_band(ax, curves, f"C{i}", f"{method} ({len(entry.seeds)} seeds)")
        last = ax.get_xlim()[1] if ax.lines and runs_range_only else None
        for name, curve in sorted((published_curves or {}).get(env, {}).items()):
            published_band(ax, curve, f"{name} (published, {curve[0][5]} seeds)", up_to=last)
        markers = "sv^<>Dph"
        for j, (name, points) in enumerate(sorted(published_points.get(env, {}).items())):
            x, y = np.array(points, dtype=np.float64).T
            if last is not None:  # the runs' range: a published budget beyond it is another budget
                x, y = x[x <= last * 1.02], y[x <= last * 1.02]
                if not len(x):
                    continue
            ax.scatter(x, y, marker=markers[j % len(markers)], color="0.4", s=18, label=f"{name} (published)")
        ax.set_title(env)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("return", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interval_estimates(points: dict, intervals: dict, path: str) -> None:
    """Mean, median, IQM and optimality gap with their CIs, one row per method (rliable's plot)."""
    from rliable import plot_utils

    from psrl_jax.analysis.statistics import AGGREGATE_NAMES, AGGREGATES

    plt = pyplot()
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=[AGGREGATE_NAMES[a] for a in AGGREGATES],
        algorithms=list(points),
        xlabel="Human-normalised score",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def probability_of_improvement(poi: dict, methods: list, path: str) -> None:
    """One panel per method X of this project: P(X > Y) with its CI for every other method Y
    (the layout of the PSRL supplementary's Figure 2)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 0.4 * len(poi) / len(methods) + 1.5))
    for ax, x in zip(np.atleast_1d(axes), methods, strict=True):
        rows = [(y, p) for (xx, y), p in poi.items() if xx == x]
        labels = [y for y, _ in rows]
        values = np.array([p for _, p in rows])
        positions = np.arange(len(rows))
        ax.barh(positions, values[:, 2] - values[:, 1], left=values[:, 1], color="C0", alpha=0.5, height=0.6)
        ax.scatter(values[:, 0], positions, color="k", s=12, zorder=3)
        ax.axvline(0.5, color="0.5", linestyle="--", linewidth=1)
        ax.set_yticks(positions, labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"P({x} > Y)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_consistency(rows: dict, path: str, ylabel: str) -> None:
    """Bars: the mean with the first n seeds; line (right axis): the std over those seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    right = ax.twinx()
    width = 0.8 / max(len(rows), 1)
    for i, (method, table) in enumerate(rows.items()):
        n, mean, std = np.array(table, dtype=np.float64).T
        ax.bar(n + (i - (len(rows) - 1) / 2) * width, mean, width=width, color=f"C{i}", alpha=0.7, label=method)
        right.plot(n, std, color=f"C{i}", marker="o", linestyle="-")
    ax.set_xlabel("number of seeds n (first n)")
    ax.set_ylabel(f"{ylabel} (bars)")
    right.set_ylabel("std over seeds (lines)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
