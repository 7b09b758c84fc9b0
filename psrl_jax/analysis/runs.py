"""Reading finished and unfinished run directories into per-seed evaluation scores.

A run directory (train/run_dir.py) holds config.json, metrics/seed_<i>.jsonl and, once the run has
finished, final_eval.json. Seed index i of a run is the global seed `config.seed + i` (the trainer's
PRNG key and environment seed), so seeds of one method and game may come from several run
directories (a sweep groups seeds into vmapped runs).

Scores are evaluation returns: the `final_eval` record (the many-episode evaluation at the end of
training), `eval` records along the way, and launch/evaluate.py's evaluation_<step>_<n>ep.json files;
where several evaluated the same step, the one with the most episodes counts. The x-axis is the
record's `env_step`: agent steps on Atari (x4 frames), environment steps (action repeats counted,
the PlaNet convention) on DMC.
"""

import dataclasses
import glob
import json
import os
import re

from psrl_jax.config import PSRL_TERMS
from psrl_jax.train.run_dir import read_metrics


class NotARunDirectory(ValueError):
    pass


@dataclasses.dataclass
class SeedResult:
    seed: int  # global seed: config.seed + seed index
    evals: dict  # {env_step: (return_mean, episodes)}
    reached: int  # largest env_step in any record: how far training got

    def curve(self) -> list:
        return sorted((step, mean) for step, (mean, _) in self.evals.items())

    def score_at(self, step: int) -> float | None:
        return self.evals[step][0] if step in self.evals else None


@dataclasses.dataclass
class Run:
    run_dir: str
    method: str  # config.name
    domain: str  # "atari" or "dmc"
    env: str  # Atari game or DMC task
    budget: int  # config.total_env_steps
    num_seeds: int  # seeds the run was started with (config.num_seeds)
    seeds: list  # [SeedResult] for the seeds that wrote metrics
    finished: bool  # final_eval.json written: the run reached its budget and ran its final evaluation
    config: dict = dataclasses.field(default_factory=dict, repr=False)  # its config.json

    @property
    def missing_seeds(self) -> list:
        first = min((s.seed for s in self.seeds), default=0)
        have = {s.seed for s in self.seeds}
        return [first + i for i in range(self.num_seeds) if first + i not in have]


def load_run(run_dir: str) -> Run:
    config_path = os.path.join(run_dir, "config.json")
    paths = glob.glob(os.path.join(run_dir, "metrics", "seed_*.jsonl"))
    if not os.path.isfile(config_path) or not paths:
        raise NotARunDirectory(
            f"{run_dir} is not a run directory: it needs config.json and metrics/seed_<i>.jsonl "
            "(written by launch/atari.py or launch/dmc.py)"
        )
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise NotARunDirectory(f"{config_path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise NotARunDirectory(f"{config_path} holds no config (a JSON {type(config).__name__})")
    env = config.get("env", {})
    if "game" in env:
        domain, name = "atari", env["game"]
    elif "task" in env:
        domain, name = "dmc", env["task"]
    else:
        raise NotARunDirectory(f"{config_path} names neither env.game (Atari) nor env.task (DMC)")

    extra = _evaluation_files(run_dir)
    seeds = []
    for path in paths:
        index = int(re.fullmatch(r"seed_(\d+)\.jsonl", os.path.basename(path)).group(1))
        evals, reached = {}, 0
        try:
            records = read_metrics(run_dir, index)  # a partial last line (a killed run) is skipped
        except ValueError as error:
            raise NotARunDirectory(str(error)) from None
        for record in records:
            reached = max(reached, int(record.get("env_step", 0)))
            if record.get("kind") in ("eval", "final_eval"):
                _keep_most_episodes(evals, record["env_step"], record["return_mean"], record.get("episodes", 0))
        for step, per_seed in extra.items():
            if index < len(per_seed):
                _keep_most_episodes(evals, step, *per_seed[index])
        seeds.append(SeedResult(seed=int(config.get("seed", 0)) + index, evals=evals, reached=reached))
    seeds.sort(key=lambda s: s.seed)
    return Run(
        run_dir=run_dir,
        method=config.get("name", os.path.basename(os.path.normpath(run_dir))),
        domain=domain,
        env=name,
        budget=int(config["total_env_steps"]),
        num_seeds=int(config.get("num_seeds", len(seeds))),
        seeds=seeds,
        finished=os.path.isfile(os.path.join(run_dir, "final_eval.json")),
        config=config,
    )


# Config fields that do not change what a run measures: where and how its seeds are placed and run
# (tested equal), its logging and checkpoints, its seed and budget (budgets are compared apart).
NOT_THE_METHOD = (
    *("seed", "num_seeds", "run_dir", "resume", "total_env_steps", "log", "checkpoint", "seed_batching"),
    *("shard_seeds", "loop", "update_scan_unroll", "env.backend", "eval.max_parallel_envs"),
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _method_fields(config: dict) -> dict:
    """config's fields that define the method, flattened."""
    return {
        k: v for k, v in _flatten(config).items() if not any(k == p or k.startswith(p + ".") for p in NOT_THE_METHOD)
    }


def method_differences(a: dict, b: dict) -> list:
    """The fields where config dicts a and b describe different methods, as "field: a_value vs
    b_value" strings. The rest of the psrl section is compared only where a PSRL term is on in both."""
    fa, fb = _method_fields(a), _method_fields(b)
    psrl_on = any(fa.get(f"psrl.{t}") for t in PSRL_TERMS) and any(fb.get(f"psrl.{t}") for t in PSRL_TERMS)
    differences = []
    for key in sorted(set(fa) | set(fb)):
        if key.startswith("psrl.") and key[5:] not in PSRL_TERMS and not psrl_on:
            continue
        if fa.get(key, "(none)") != fb.get(key, "(none)"):
            differences.append(f"{key}: {fa.get(key, '(none)')!r} vs {fb.get(key, '(none)')!r}")
    return differences


def _keep_most_episodes(evals: dict, step, mean, episodes) -> None:
    step = int(step)
    if step not in evals or episodes > evals[step][1]:
        evals[step] = (float(mean), int(episodes))


def _evaluation_files(run_dir: str) -> dict:
    """{env_step: [(mean, episodes) per seed index]} from launch/evaluate.py's output files."""
    found = {}
    for path in glob.glob(os.path.join(run_dir, "evaluation_*ep.json")):
        with open(path) as f:
            data = json.load(f)
        episodes = int(data.get("episodes_per_seed", 0))
        found[int(data["env_step"])] = [(float(m), episodes) for m in data["return_mean_per_seed"]]
    return found
