"""Learning curves from run directories (per-seed JSONL), with published reference scores as lines."""

import glob
import os

import numpy as np

from psrl_jax.analysis.published import atari_table, canonical_game
from psrl_jax.train.run_dir import metrics_path, read_metrics


def load_records(run_dir: str, kind: str) -> dict:
    """{seed_index: [records of this kind]} read from run_dir/metrics/seed_<i>.jsonl."""
    paths = glob.glob(metrics_path(run_dir, "*"))
    if not paths:
        raise FileNotFoundError(f"{run_dir} is not a run directory (no metrics/seed_*.jsonl)")
    seeds = sorted(int(os.path.basename(p)[len("seed_") : -len(".jsonl")]) for p in paths)
    return {seed: [r for r in read_metrics(run_dir, seed) if r["kind"] == kind] for seed in seeds}


def reference_scores(csv_path: str, game: str) -> dict:
    """Row of the published Atari 100k table for `game` ({} if the file or game is missing)."""
    if not os.path.exists(csv_path):
        return {}
    table = atari_table(csv_path)
    name = canonical_game(game, table)
    return {} if name is None else table[name]


def plot_learning_curves(run_dirs: list, out_path: str, title: str = "", references: dict | None = None) -> None:
    """Evaluation return (mean over episodes) against env steps, one line per seed and run,
    training-episode returns as faint points, reference scores as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        label = os.path.basename(os.path.normpath(run_dir))
        train = load_records(run_dir, "train_episode")
        evals = load_records(run_dir, "eval")
        finals = load_records(run_dir, "final_eval")
        for seed in sorted(evals):
            points = sorted((r["env_step"], r["return_mean"]) for r in evals[seed] + finals.get(seed, []))
            if points:
                x, y = np.array(points).T
                ax.plot(x, y, marker="o", label=f"{label} seed {seed} (eval)")
            if train.get(seed):
                tx = [r["env_step"] for r in train[seed]]
                ty = [r["return"] for r in train[seed]]
                ax.scatter(tx, ty, s=4, alpha=0.25)
    for i, (name, value) in enumerate(sorted((references or {}).items())):
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{i + 3}", label=f"{name} (published, 100k)")
    ax.set_xlabel("agent env steps (x4 frames)")
    ax.set_ylabel("episode return (unclipped)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def read_external_curve(path: str) -> dict:
    """{seed: [(env_step, return), ...]} from a CSV with columns env_step, seed, return: the evaluation
    curve of another implementation (e.g. a reference code's logs), in environment steps."""
    import csv

    with open(path) as f:
        reader = csv.DictReader(f)
        missing = {"env_step", "seed", "return"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))} (needs env_step, seed, return)")
        curve = {}
        for row in reader:
            curve.setdefault(row["seed"], []).append((float(row["env_step"]), float(row["return"])))
    if not curve:
        raise ValueError(f"{path} has no rows")
    return {seed: sorted(points) for seed, points in curve.items()}


def plot_dmc_curves(runs: list, out_path: str, title: str, external: dict, published_curve: list | None) -> None:
    """DMC side by side: per run directory and per external curve ({label: read_external_curve(...)}),
    the mean evaluation return over its seeds at each environment step (± std shaded; only steps every
    seed reached), and a published curve [(env_step, mean, std, min, max, seeds)] as a dashed band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = {f"{run.method} ({os.path.basename(os.path.normpath(run.run_dir))})": {
        s.seed: s.curve() for s in run.seeds} for run in runs}  # fmt: skip
    sources.update(external)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    last = 0.0
    for i, (label, per_seed) in enumerate(sources.items()):
        by_step = {}
        for points in per_seed.values():
            for step, value in points:
                by_step.setdefault(step, []).append(value)
        steps = np.array(sorted(s for s, v in by_step.items() if len(v) == len(per_seed)))
        if not len(steps):
            continue
        mean = np.array([np.mean(by_step[s]) for s in steps])
        std = np.array([np.std(by_step[s]) for s in steps])
        ax.plot(steps, mean, marker="o", markersize=3, color=f"C{i}", label=f"{label}, {len(per_seed)} seeds")
        ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        last = max(last, steps[-1])
    if published_curve:
        x, mean, std = np.array([p[:3] for p in published_curve if p[0] <= last * 1.02 or not last]).T
        seeds = published_curve[0][5]
        ax.plot(x, mean, "--", color="0.3", linewidth=1, label=f"published DrQ, batch 512, {seeds} seeds")
        ax.fill_between(x, mean - std, mean + std, color="0.5", alpha=0.15)
    ax.set_xlabel("environment steps (action repeats counted)")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
