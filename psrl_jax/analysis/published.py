"""Published baseline scores shipped with the project (data/README.md cites the sources), and the
human-normalised score computed from them."""

import csv
import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
ATARI_CSV = os.path.join(DATA_DIR, "atari100k_published.csv")
DMC_CSV = os.path.join(DATA_DIR, "dmc_published.csv")
DRQ_CURVE_CSV = os.path.join(DATA_DIR, "drq_planet_curve.csv")

ATARI_METHODS = ("simple", "der", "otrainbow", "curl", "drq", "spr")
ATARI_METHOD_NAMES = {
    "simple": "SimPLe",
    "der": "DER",
    "otrainbow": "OTRainbow",
    "curl": "CURL",
    "drq": "DrQ",
    "spr": "SPR",
}
DMC_METHODS = ("curl", "drq", "spr", "pixel_sac", "state_sac")
DMC_METHOD_NAMES = {"curl": "CURL", "drq": "DrQ", "spr": "SPR", "pixel_sac": "Pixel SAC", "state_sac": "State SAC"}
# The columns from CURL's Table 1: CURL's code counts agent steps (calls to the action-repeating env),
# so its "100k" may be 100k agent steps, action-repeat times more environment steps (data/README.md).
# The report marks them and leaves them off the environment-step curves.
DMC_AGENT_STEP_METHODS = ("curl", "pixel_sac", "state_sac")


def atari_table(path: str = ATARI_CSV) -> dict:
    """{game: {"random": .., "human": .., "spr": .., ...}} from the published Atari 100k table."""
    with open(path) as f:
        return {row["game"]: {k: float(v) for k, v in row.items() if k != "game" and v} for row in csv.DictReader(f)}


def dmc_table(path: str = DMC_CSV) -> dict:
    """{(task, budget_steps): {method: (mean, std)}} from the published DMC table."""
    table = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            budget = int(row["budget"].rstrip("k")) * 1000
            table[(row["task"], budget)] = {
                m: (float(row[f"{m}_mean"]), float(row[f"{m}_std"])) for m in DMC_METHODS if row.get(f"{m}_mean")
            }
    return table


def drq_curve(path: str = DRQ_CURVE_CSV) -> dict:
    """{task: [(env_step, mean, std, min, max, seeds), ...]}: DrQ's own evaluation curves on the PlaNet
    tasks (10 seeds; data/README.md), in environment steps."""
    curves = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            point = tuple(float(row[k]) for k in ("env_step", "mean", "std", "min", "max")) + (int(row["seeds"]),)
            curves.setdefault(row["task"], []).append(point)
    return {task: sorted(points) for task, points in curves.items()}


def canonical_game(game: str, table: dict) -> str | None:
    """The table's spelling of `game` (case and underscores ignored: 'James_Bond' -> 'Jamesbond'), or None."""
    wanted = game.replace("_", "").lower()
    for name in table:
        if name.replace("_", "").lower() == wanted:
            return name
    return None


def human_normalized(scores, game: str, table: dict | None = None):
    """(score - random) / (human - random) with the standard per-game random and human scores."""
    table = atari_table() if table is None else table
    name = canonical_game(game, table)
    if name is None:
        raise KeyError(f"no random/human scores for Atari game {game!r}; known: {', '.join(sorted(table))}")
    row = table[name]
    return (np.asarray(scores, dtype=np.float64) - row["random"]) / (row["human"] - row["random"])
