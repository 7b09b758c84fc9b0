"""Learning curves from run directories (per-seed JSONL), with published reference scores as lines."""

import glob
import os

import numpy as np

from psrl_jax.analysis.figures import published_band, pyplot, seed_mean_band
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
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
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
    _save(fig, out_path)


def _save(fig, out_path: str) -> None:
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    pyplot().close(fig)


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
    sources = {f"{run.method} ({os.path.basename(os.path.normpath(run.run_dir))})": [
        s.curve() for s in run.seeds] for run in runs}  # fmt: skip
    sources.update({label: list(per_seed.values()) for label, per_seed in external.items()})
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    last = 0.0
    for i, (label, curves) in enumerate(sources.items()):
        steps = seed_mean_band(ax, curves, f"C{i}", f"{label}, {len(curves)} seeds", every_seed=True)
        if len(steps):
            last = max(last, steps[-1])
    if published_curve:
        label = f"published DrQ, batch 512, {published_curve[0][5]} seeds"
        published_band(ax, published_curve, label, up_to=last or None)
    ax.set_xlabel("environment steps (action repeats counted)")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out_path)
