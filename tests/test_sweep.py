"""launch/sweep.py: the commands of a games x seeds sweep, and what it does with existing run dirs."""

import json
import os
import subprocess
import sys

import pytest

from psrl_jax.config import config_to_dict
from psrl_jax.envs.dmc import PLANET_ACTION_REPEAT
from psrl_jax.train.run_dir import latest_checkpoint_step, set_aside_previous_attempt
from psrl_jax.train.sweep import (
    ATARI_26,
    SweepError,
    load_config,
    parse_games,
    plan_sweep,
    summary,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "rainbow.py") + ":smoke"  # name: rainbow-smoke


def write_config_json(run_dir, game, seed, num_seeds):
    """config.json as the trainer writes it for this run."""
    config = load_config(CONFIG)
    config.env.game, config.seed, config.num_seeds, config.run_dir = game, seed, num_seeds, run_dir
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config_to_dict(config), f)


def test_two_games_four_seeds_in_runs_of_two(tmp_path):
    runs = plan_sweep(CONFIG, "Pong,kung_fu_master", 4, 2, root=str(tmp_path), overrides=["agent.batch_size=16"])
    base = os.path.join(str(tmp_path), "rainbow-smoke")
    expected = [("Pong", 0), ("Pong", 2), ("KungFuMaster", 0), ("KungFuMaster", 2)]
    assert [(run.game, run.seed, run.num_seeds, run.status) for run in runs] == [
        (game, seed, 2, "start") for game, seed in expected
    ]
    for run, (game, seed) in zip(runs, expected, strict=True):
        run_dir = os.path.join(base, game, f"s{seed}x2")
        assert run.run_dir == run_dir
        assert run.command("python", "launch/atari.py") == [
            "python",
            "launch/atari.py",
            "--config",
            CONFIG,
            f"--config.env.game={game}",
            f"--config.seed={seed}",
            "--config.num_seeds=2",
            f"--config.run_dir={run_dir}",
            "--config.agent.batch_size=16",
        ]
    assert summary(runs) == "4 runs: 0 finished (skipped), 0 to resume, 4 to start"


def test_all_seeds_in_one_run_by_default(tmp_path):
    runs = plan_sweep(CONFIG, "Pong", 10, root=str(tmp_path))
    assert [(run.seed, run.num_seeds) for run in runs] == [(0, 10)]


def test_seeds_must_be_a_multiple_of_the_group(tmp_path):
    with pytest.raises(SweepError, match="--seeds=5 is not a multiple of --seeds_per_run=2"):
        plan_sweep(CONFIG, "Pong", 5, 2, root=str(tmp_path))


def test_unknown_game_suggests_close_matches(tmp_path):
    with pytest.raises(SweepError, match="unknown game 'RoadRuner'.*RoadRunner"):
        plan_sweep(CONFIG, "Pong,RoadRuner", 2, root=str(tmp_path))
    assert not os.listdir(tmp_path)  # failed before anything was made


def test_atari26_is_26_envpool_games():
    from psrl_jax.envs.atari import resolve_game

    games = parse_games("atari26")
    assert len(set(games)) == 26 and games == ATARI_26
    assert [resolve_game(game) for game in games] == [f"{game}-v5" for game in games]
    # A game outside the 26 is accepted in envpool's spelling; any case of one of the 26 is canonical.
    assert parse_games("pitfall,JAMESBOND,Jamesbond") == ("Pitfall", "Jamesbond")


def test_bad_override_field_is_an_error(tmp_path):
    with pytest.raises(SweepError, match="no field 'agent.batchsize'; did you mean agent.batch_size"):
        plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path), overrides=["agent.batchsize=16"])
    with pytest.raises(SweepError, match="set by the sweep; use --first_seed"):
        plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path), overrides=["seed=3"])


def test_finished_run_is_skipped(tmp_path):
    run_dir = os.path.join(str(tmp_path), "rainbow-smoke", "Pong", "s0x2")
    write_config_json(run_dir, "Pong", 0, 2)
    with open(os.path.join(run_dir, "final_eval.json"), "w") as f:
        json.dump({"env_step": 1200}, f)
    runs = plan_sweep(CONFIG, "Pong", 4, 2, root=str(tmp_path))
    assert [run.status for run in runs] == ["done", "start"]
    assert summary(runs).startswith("2 runs: 1 finished (skipped), 0 to resume, 1 to start")


def test_checkpointed_run_resumes(tmp_path):
    import jax.numpy as jnp

    from psrl_jax.train.checkpoint import Checkpointer

    run_dir = os.path.join(str(tmp_path), "rainbow-smoke", "Pong", "s0x2")
    write_config_json(run_dir, "Pong", 0, 2)
    # An interrupted save (orbax's temporary directory) is not a checkpoint, for orbax or for the sweep.
    os.makedirs(os.path.join(run_dir, "checkpoints", "800.orbax-checkpoint-tmp-1700000000"))
    checkpointer = Checkpointer(run_dir, keep=2)
    assert checkpointer.latest_step() is None and latest_checkpoint_step(run_dir) is None
    checkpointer.save(400, {"x": jnp.zeros(2)}, {"env_step": 400})
    checkpointer.close()
    assert Checkpointer(run_dir, keep=2).latest_step() == latest_checkpoint_step(run_dir) == 400

    run = plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path))[0]
    assert run.status == "resume"
    assert run.flags[-1] == "--config.resume=True"


def test_run_killed_before_its_first_checkpoint_restarts(tmp_path):
    run_dir = os.path.join(str(tmp_path), "rainbow-smoke", "Pong", "s0x2")
    write_config_json(run_dir, "Pong", 0, 2)
    os.makedirs(os.path.join(run_dir, "metrics"))
    os.makedirs(os.path.join(run_dir, "checkpoints"))  # the trainer creates it empty at start
    with open(os.path.join(run_dir, "metrics", "seed_0.jsonl"), "w") as f:
        f.write('{"kind": "run_info", "env_step": 0}\n')
    run = plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path))[0]
    assert run.status == "restart"
    assert not any("resume" in flag for flag in run.flags)  # the trainer refuses resume without a checkpoint
    (moved,) = set_aside_previous_attempt(run_dir)  # what the trainer does on a fresh start
    assert os.path.isfile(os.path.join(moved, "seed_0.jsonl")) and not os.path.exists(os.path.join(run_dir, "metrics"))
    assert plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path))[0].status == "start"


def test_run_dir_of_another_run_is_an_error(tmp_path):
    run_dir = os.path.join(str(tmp_path), "rainbow-smoke", "Pong", "s0x2")
    write_config_json(run_dir, "Pong", 0, 4)
    with pytest.raises(SweepError, match="num_seeds: 4 there, 2 here"):
        plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path))


def run_cli(tmp_path, exit_code, *args):
    """launch/sweep.py --run with a fake interpreter that appends its arguments to calls.txt."""
    fake = tmp_path / f"fake_python_{exit_code}"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls.txt"\nexit {exit_code}\n')
    fake.chmod(0o755)
    command = [sys.executable, "launch/sweep.py", "--config", CONFIG, "--python", str(fake), "--run", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    calls_path = tmp_path / "calls.txt"
    calls = calls_path.read_text().splitlines() if calls_path.exists() else []
    return result, calls


def test_cli_runs_unfinished_runs_and_stops_at_the_first_failure(tmp_path):
    root = str(tmp_path / "runs")
    sweep = ["--games", "Pong", "--seeds", "6", "--seeds_per_run", "2", "--root", root]
    finished = os.path.join(root, "rainbow-smoke", "Pong", "s0x2")
    write_config_json(finished, "Pong", 0, 2)
    open(os.path.join(finished, "final_eval.json"), "w").close()

    result, calls = run_cli(tmp_path, 0, *sweep)
    assert result.returncode == 0, result.stderr
    assert "3 runs: 1 finished (skipped), 0 to resume, 2 to start" in result.stderr
    assert [call.split()[0] for call in calls] == ["launch/atari.py"] * 2
    assert [call.split()[4] for call in calls] == ["--config.seed=2", "--config.seed=4"]

    os.remove(tmp_path / "calls.txt")
    result, calls = run_cli(tmp_path, 1, *sweep)
    assert result.returncode != 0
    assert len(calls) == 1
    assert "run 1/2" in result.stderr and "failed with exit code 1; 1 runs were not started" in result.stderr


DMC_CONFIG = os.path.join(ROOT, "configs", "sac_psrl.py") + ":smoke"  # name: sac_psrl-smoke


def test_dmc_sweep_planet6_tasks_through_launch_dmc(tmp_path):
    runs = plan_sweep(DMC_CONFIG, seeds=4, seeds_per_run=2, root=str(tmp_path), tasks="planet6")
    tasks = [run.game for run in runs]
    assert tasks[::2] == list(PLANET_ACTION_REPEAT)  # the six PlaNet tasks, each in two runs of 2 seeds
    assert len(set(tasks[::2])) == 6
    assert {run.script for run in runs} == {"dmc.py"}
    first = runs[0]
    assert "--config.env.task=finger_spin" in first.flags
    assert not any(flag.startswith("--config.env.game") for flag in first.flags)
    assert first.run_dir == os.path.join(str(tmp_path), "sac_psrl-smoke", "finger_spin", "s0x2")
    # Any spelling envpool or dm_control users type maps to one canonical task; unknown ones get suggestions.
    spelled = plan_sweep(DMC_CONFIG, seeds=1, root=str(tmp_path), tasks="WalkerWalk-v1,walker-walk")
    assert [run.game for run in spelled] == ["walker_walk"]
    with pytest.raises(SweepError, match="walker_walk"):
        plan_sweep(DMC_CONFIG, seeds=1, root=str(tmp_path), tasks="walker_wlak")


def test_games_and_tasks_belong_to_their_domain(tmp_path):
    with pytest.raises(SweepError, match="--tasks"):
        plan_sweep(DMC_CONFIG, "Pong", 2, root=str(tmp_path))
    with pytest.raises(SweepError, match="--games"):
        plan_sweep(CONFIG, seeds=2, root=str(tmp_path), tasks="walker_walk")
    with pytest.raises(SweepError, match="--tasks"):
        plan_sweep(DMC_CONFIG, seeds=2, root=str(tmp_path), tasks="planet6", overrides=["env.task=cheetah_run"])


def test_dmc_run_directory_of_another_task_is_refused(tmp_path):
    run_dir = tmp_path / "sac_psrl-smoke" / "walker_walk" / "s0x1"
    config = load_config(DMC_CONFIG)
    config.env.task, config.seed, config.num_seeds = "cheetah_run", 0, 1
    os.makedirs(run_dir)
    with open(run_dir / "config.json", "w") as f:
        json.dump(config_to_dict(config), f)
    with pytest.raises(SweepError, match="env.task"):
        plan_sweep(DMC_CONFIG, seeds=1, root=str(tmp_path), tasks="walker_walk")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"games": ""}, "--games is empty"),  # an unset $GAMES must not mean all 26
        ({"games": "Pong", "seeds_per_run": 0}, "must be positive"),
        ({"games": "Pong", "overrides": ["agent.batch_size=0"]}, "every run would fail.*batch_size"),
        ({"games": "Pong", "overrides": ["agent.batch_size=two"]}, "agent.batch_size=two"),
        ({"tasks": "", "config_arg": os.path.join(ROOT, "configs", "sac.py")}, "--tasks is empty"),
        (
            {
                "tasks": "cartpole_swingup",
                "config_arg": os.path.join(ROOT, "configs", "sac.py"),
                "overrides": ["env.action_repeat=0"],
            },
            "action_repeat",
        ),
        (
            {"games": "Pong", "config_arg": os.path.join(ROOT, "configs", "rainbow.py") + ":nosuch"},
            "get_config\\('nosuch'\\) failed",
        ),
        ({"games": "Pong", "config_arg": os.path.join(ROOT, "README.md")}, "not a Python config file"),
        ({"games": "Pong", "config_arg": os.path.join(ROOT, "psrl_jax", "schedules.py")}, "no get_config"),
    ],
)
def test_a_sweep_that_would_fail_is_refused_before_anything_is_made(tmp_path, kwargs, message):
    kwargs = {"config_arg": CONFIG, "seeds": 2, **kwargs}
    with pytest.raises(SweepError, match=message):
        plan_sweep(root=str(tmp_path / "root"), **kwargs)
    assert not os.path.exists(tmp_path / "root")


def test_sweep_root_that_is_a_file_and_a_broken_config_json_are_errors(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SweepError, match="is a file"):
        plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path / "file"))
    run_dir = tmp_path / "root" / "rainbow-smoke" / "Pong" / "s0x2"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(SweepError, match="not valid JSON"):
        plan_sweep(CONFIG, "Pong", 2, root=str(tmp_path / "root"))
