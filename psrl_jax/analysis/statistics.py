"""Aggregate statistics over runs x tasks with rliable (Agarwal et al., NeurIPS 2021): mean, median,
IQM and optimality gap with stratified-bootstrap confidence intervals, probability of improvement,
and the seed-consistency table of the PSRL supplementary (its Figures 3 and 4).

Every score matrix is (num_runs, num_tasks): runs are seeds, tasks are games or DMC tasks.
"""

import contextlib
import warnings

import numpy as np
from rliable import library as rly
from rliable import metrics

AGGREGATES = ("mean", "median", "iqm", "optimality_gap")
AGGREGATE_NAMES = {"mean": "Mean", "median": "Median", "iqm": "IQM", "optimality_gap": "Optimality gap"}


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """[mean, median, IQM, optimality gap] of a (runs, tasks) matrix; the median is over per-task
    means, the IQM the 25% trimmed mean over all runs x tasks, the gap measured from 1 (human)."""
    return np.array(
        [
            metrics.aggregate_mean(scores),
            metrics.aggregate_median(scores),
            metrics.aggregate_iqm(scores),
            metrics.aggregate_optimality_gap(scores, gamma=1),
        ]
    )


def interval_estimates(score_dict: dict, reps: int, seed: int, confidence: float = 0.95) -> tuple[dict, dict]:
    """Point estimates {method: [4]} and CIs {method: [2, 4]} (stratified bootstrap over runs per task).
    A method with one run per task (published means) gets a CI equal to its point estimate."""
    with _quiet_arch():
        return rly.get_interval_estimates(
            {m: np.asarray(s, dtype=np.float64) for m, s in score_dict.items()},
            aggregate_metrics,
            reps=reps,
            confidence_interval_size=confidence,
            random_state=np.random.RandomState(seed),
        )


def probability_of_improvement(score_dict: dict, pairs: list, reps: int, seed: int) -> dict:
    """{(x, y): (P(X > Y), low, high)} for each pair: P(X_m > Y_m) (Mann-Whitney U / (n_x n_y), ties
    counted half) averaged over tasks, with a stratified-bootstrap 95% CI. Both matrices must hold
    the same tasks in the same order. Pairs where both sides have a single run are not bootstrapped
    (every resample is the data itself)."""
    result = {}
    to_bootstrap = {}
    for x, y in pairs:
        sx, sy = np.asarray(score_dict[x], np.float64), np.asarray(score_dict[y], np.float64)
        if sx.shape[1] != sy.shape[1]:
            raise ValueError(f"{x} has {sx.shape[1]} tasks and {y} {sy.shape[1]}: compare on the same tasks")
        if sx.shape[0] == 1 and sy.shape[0] == 1:
            p = pairwise_probability_of_improvement(sx, sy)
            result[(x, y)] = (p, p, p)
        else:
            to_bootstrap[f"{x}\0{y}"] = (sx, sy)
    if to_bootstrap:
        with _quiet_arch():
            points, intervals = rly.get_interval_estimates(
                to_bootstrap, pairwise_probability_of_improvement, reps=reps, random_state=np.random.RandomState(seed)
            )
        for key, p in points.items():
            x, y = key.split("\0")
            low, high = np.ravel(intervals[key])
            result[(x, y)] = (float(p), float(low), float(high))
    return result


def pairwise_probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's metrics.probability_of_improvement, computed by counting pairs instead of calling
    scipy's Mann-Whitney test per task (same value, ~100x faster inside a 2000-rep bootstrap):
    per task, the fraction of (x run, y run) pairs with x > y, ties counting half."""
    x, y = scores_x[:, None, :], scores_y[None, :, :]
    per_task = (x > y).mean(axis=(0, 1)) + 0.5 * (x == y).mean(axis=(0, 1))
    return float(per_task.mean())


def seed_consistency(scores: np.ndarray, counts=None) -> list:
    """[(n, mean, std)]: with the first n seeds, the mean score over seeds x tasks and the standard
    deviation over seeds of each seed's task-averaged score (the supplementary's Figures 3/4 use
    n = 5 and 10). Default counts: every n from 1 to the number of seeds."""
    scores = np.asarray(scores, dtype=np.float64)
    counts = range(1, scores.shape[0] + 1) if counts is None else counts
    rows = []
    for n in counts:
        per_seed = scores[:n].mean(axis=1)
        rows.append((int(n), float(per_seed.mean()), float(per_seed.std())))
    return rows


@contextlib.contextmanager
def _quiet_arch():
    """rliable passes a RandomState to arch's bootstrap, which arch >= 7 flags as deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        yield
