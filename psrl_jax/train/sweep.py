"""Sweeps: one config trained on many games (Atari) or tasks (DMC) x seeds, seeds grouped into
vmapped runs (launch/sweep.py).

A sweep is a list of runs. A run trains `num_seeds` agents of one game or task in one process (global
seeds seed .. seed + num_seeds - 1) in the fixed directory <root>/<config name>/<game>/s<seed>x<num_seeds>,
so planning the same sweep again finds what earlier invocations left there. Each run gets a status:

    done     final_eval.json exists: the run is finished and skipped
    resume   a complete checkpoint exists: rerun with --config.resume=True
    restart  metrics but no checkpoint (killed before its first checkpoint): rerun from step 0; the
             trainer moves the killed attempt's metrics/ and tensorboard/ aside on a fresh start.
    start    nothing there yet

A directory whose config.json names another config, game, seed or seed count is an error: resuming
or skipping it would silently mix experiments.
"""

import ast
import dataclasses
import difflib
import glob
import importlib.util
import json
import os

import ml_collections

from psrl_jax.analysis.published import atari_table
from psrl_jax.config import is_dmc_config
from psrl_jax.train.run_dir import latest_checkpoint_step

# The Atari 100k benchmark (Kaiser et al. 2020): the 26 games of the published table shipped in
# psrl_jax/analysis/data/ (the set and envpool spelling used by SPR, Schwarzer et al. 2021).
ATARI_26 = tuple(atari_table())

# Set per run by the sweep itself; an --override of one of them would contradict the run directory.
SWEEP_FIELDS = {
    "seed": "--first_seed",
    "num_seeds": "--seeds_per_run",
    "env.game": "--games",
    "env.task": "--tasks",
    "run_dir": "--root",
    "resume": "(set automatically)",
}


class SweepError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Run:
    game: str  # Atari game or DMC task
    seed: int  # global seed of the run's first agent
    num_seeds: int
    run_dir: str
    status: str  # "done" | "resume" | "restart" | "start"
    flags: tuple  # arguments of the training script
    script: str = "atari.py"  # launch/atari.py or launch/dmc.py

    def command(self, python: str, script: str) -> list:
        return [python, script, *self.flags]


# ----- inputs ------------------------------------------------------------------------------------


def load_config(config_arg: str) -> ml_collections.ConfigDict:
    """'configs/x.py[:variant]' -> get_config([variant]), as ml_collections.config_flags loads it."""
    path, *variant = config_arg.split(":", 1)
    if not os.path.isfile(path):
        raise SweepError(f"config file {path!r} not found")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None or not path.endswith(".py"):
        raise SweepError(f"{path} is not a Python config file (configs/<name>.py[:variant])")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise SweepError(f"{path} defines no get_config(): it is not a config file")
    try:
        return module.get_config(*variant)
    except Exception as error:  # e.g. an unknown variant name
        raise SweepError(f"{config_arg}: get_config({', '.join(map(repr, variant))}) failed: {error}") from error


def _game_key(name: str) -> str:
    """'kung_fu_master', 'KungFuMaster-v5' -> 'kungfumaster' (envpool ignores case and separators)."""
    name = name.strip().lower().removesuffix("-v5")
    return "".join(ch for ch in name if ch.isalnum())


def canonical_game(name: str) -> str:
    """The ATARI_26 spelling of `name`, else envpool's; raises SweepError with close matches."""
    by_key = {_game_key(game): game for game in ATARI_26}
    if _game_key(name) in by_key:
        return by_key[_game_key(name)]
    from psrl_jax.envs.atari import resolve_game  # imports envpool: only for games outside the 26

    try:
        return resolve_game(name).removesuffix("-v5")
    except ValueError as error:
        close = difflib.get_close_matches(name, ATARI_26, n=5, cutoff=0.5)
        hint = f" (closest Atari 100k games: {', '.join(close)})" if close else ""
        raise SweepError(f"unknown game {name!r}{hint}; envpool says: {error}") from error


def parse_games(spec: str) -> tuple:
    """'atari26' or a comma-separated list of games, in canonical spelling, without duplicates."""
    if spec.strip().lower() == "atari26":
        return ATARI_26
    names = [name for name in spec.split(",") if name.strip()]
    if not names:
        raise SweepError("--games is empty")
    return tuple(dict.fromkeys(canonical_game(name) for name in names))


def parse_tasks(spec: str) -> tuple:
    """'planet6' (the six PlaNet tasks of DESIGN.md 2) or a comma-separated list of DMC tasks, in
    canonical spelling (walker_walk), without duplicates; unknown tasks raise SweepError with close matches."""
    from psrl_jax.envs.dmc import PLANET_ACTION_REPEAT, resolve_task  # reads envpool's registry

    if spec.strip().lower() == "planet6":
        return tuple(PLANET_ACTION_REPEAT)
    names = [name for name in spec.split(",") if name.strip()]
    if not names:
        raise SweepError("--tasks is empty")
    try:
        return tuple(dict.fromkeys(resolve_task(name).name for name in names))
    except ValueError as error:
        raise SweepError(f"--tasks: {error}") from error


def seed_groups(seeds: int, seeds_per_run: int | None, first_seed: int = 0) -> list:
    """[(first global seed, seeds in the run)]: `seeds` seeds from `first_seed`, `seeds_per_run` per run."""
    seeds_per_run = seeds if seeds_per_run is None else seeds_per_run
    if seeds < 1 or seeds_per_run < 1:
        raise SweepError(f"--seeds and --seeds_per_run must be positive, got {seeds} and {seeds_per_run}")
    if seeds % seeds_per_run:
        raise SweepError(f"--seeds={seeds} is not a multiple of --seeds_per_run={seeds_per_run}")
    return [(first_seed + start, seeds_per_run) for start in range(0, seeds, seeds_per_run)]


def _leaf_fields(config, prefix: str = "") -> list:
    fields = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        fields += _leaf_fields(value, f"{name}.") if isinstance(value, ml_collections.ConfigDict) else [name]
    return fields


def parse_overrides(config, overrides) -> dict:
    """['agent.batch_size=64', ...] -> {'agent.batch_size': '64'}; every field must exist in `config`."""
    fields = _leaf_fields(config)
    parsed = {}
    for override in overrides:
        field, sep, value = override.partition("=")
        field = field.strip().removeprefix("--").removeprefix("config.")
        if not sep:
            raise SweepError(f"--override {override!r} must look like field=value")
        if field in SWEEP_FIELDS:
            raise SweepError(f"--override {field}=... is set by the sweep; use {SWEEP_FIELDS[field]}")
        if field not in fields:
            close = difflib.get_close_matches(field, fields, n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SweepError(f"--override: the config has no field {field!r}{hint}")
        parsed[field] = value
    return parsed


def check_override_values(config, override_values: dict, env_field: str, game: str) -> None:
    """Apply the overrides to a copy of `config` as the launcher would (Python literals, else
    strings) and run its value checks, so a sweep of runs that would each fail is refused now."""
    from psrl_jax.config import ConfigError, validate_any_config

    trial = ml_collections.ConfigDict(config.to_dict())
    for field, text in {**override_values, env_field: game}.items():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            trial.update_from_flattened_dict({field: value})
        except (TypeError, ValueError, KeyError) as error:
            raise SweepError(f"--override {field}={text}: {error}") from error
    try:
        validate_any_config(trial)
    except ConfigError as error:
        raise SweepError(f"with these overrides every run would fail: {error}") from error


# ----- state of a run directory ------------------------------------------------------------------


def check_same_run(run_dir: str, expected: dict) -> None:
    """Raise if run_dir/config.json was written for other values of `expected`'s fields."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as error:
        raise SweepError(f"{path} is not valid JSON ({error}); move it away or fix it") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("env", {}), dict):
        raise SweepError(f"{path} is not a run's config.json; move it away or fix it")
    found = {
        "name": saved.get("name"),
        "env.game": saved.get("env", {}).get("game"),
        "env.task": saved.get("env", {}).get("task"),
        "seed": saved.get("seed"),
        "num_seeds": saved.get("num_seeds"),
    }
    diffs = []
    for field, want in expected.items():
        have = found[field]
        same = _game_key(str(have)) == _game_key(want) if field in ("env.game", "env.task") else have == want
        if not same:
            diffs.append(f"{field}: {have!r} there, {want!r} here")
    if diffs:
        raise SweepError(
            f"{path} belongs to another run ({'; '.join(diffs)}); nothing was run. "
            "Choose another --root, or move that directory away."
        )


def run_status(run_dir: str) -> str:
    if os.path.isfile(os.path.join(run_dir, "final_eval.json")):
        return "done"
    if latest_checkpoint_step(run_dir) is not None:
        return "resume"
    if any(os.path.getsize(path) for path in glob.glob(os.path.join(run_dir, "metrics", "seed_*.jsonl"))):
        return "restart"
    return "start"


# ----- the sweep ---------------------------------------------------------------------------------


def plan_sweep(
    config_arg: str,
    games: str | None = None,
    seeds: int = 10,
    seeds_per_run: int | None = None,
    first_seed: int = 0,
    root: str = os.path.join("runs", "sweep"),
    overrides=(),
    tasks: str | None = None,
) -> list:
    """Every run of the sweep, game- (or task-) major, with its status and its launch/atari.py or
    launch/dmc.py arguments. An Atari config takes `games` (default "atari26"), a DMC config `tasks`
    (default "planet6").

    Checks everything (config, games or tasks, seeds, overrides, existing run directories) before
    returning, so a bad sweep fails before anything runs."""
    config = load_config(config_arg)
    if is_dmc_config(config):
        if games is not None:
            raise SweepError(f"{config_arg} is a DMC config: name tasks with --tasks (e.g. planet6), not --games")
        game_names, env_field, script = parse_tasks("planet6" if tasks is None else tasks), "env.task", "dmc.py"
    else:
        if tasks is not None:
            raise SweepError(f"{config_arg} is an Atari config: name games with --games (e.g. atari26), not --tasks")
        game_names, env_field, script = parse_games("atari26" if games is None else games), "env.game", "atari.py"
    if os.path.exists(root) and not os.path.isdir(root):
        raise SweepError(f"--root {root} is a file, not a directory")
    groups = seed_groups(seeds, seeds_per_run, first_seed)
    override_values = parse_overrides(config, overrides)
    check_override_values(config, override_values, env_field, game_names[0])
    name = override_values.get("name", config.name)
    override_flags = tuple(f"--config.{field}={value}" for field, value in override_values.items())
    runs = []
    for game in game_names:
        for seed, group_size in groups:
            run_dir = os.path.join(root, name, game, f"s{seed}x{group_size}")
            check_same_run(run_dir, {"name": name, env_field: game, "seed": seed, "num_seeds": group_size})
            status = run_status(run_dir)
            flags = (
                "--config",
                config_arg,
                f"--config.{env_field}={game}",
                f"--config.seed={seed}",
                f"--config.num_seeds={group_size}",
                f"--config.run_dir={run_dir}",
                *(("--config.resume=True",) if status == "resume" else ()),
                *override_flags,
            )
            runs.append(Run(game, seed, group_size, run_dir, status, flags, script))
    return runs


def summary(runs) -> str:
    count = lambda *statuses: sum(run.status in statuses for run in runs)
    line = (
        f"{len(runs)} runs: {count('done')} finished (skipped), {count('resume')} to resume, "
        f"{count('start', 'restart')} to start"
    )
    if count("restart"):
        line += f" ({count('restart')} of them restart: killed before their first checkpoint)"
    return line
