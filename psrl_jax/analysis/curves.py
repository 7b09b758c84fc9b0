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
