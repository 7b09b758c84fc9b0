"""The smoke config with 2 vmapped seeds: trains, evaluates, checkpoints, is killed, resumes, finishes."""

import functools
import json
import math
import os

import numpy as np
import pytest
from run_helpers import (
    checkpoint_steps,
    evaluate_latest_checkpoint,
    launch_command,
    output_tail,
    records,
    run_command,
    run_launch_script,
    train_until_first_checkpoint_then_kill,
)

pytestmark = pytest.mark.slow


def _command(run_dir, *extra, config="configs/rainbow.py:smoke"):
    return launch_command("atari.py", run_dir, *extra, config=config)


def test_smoke_two_seeds_kill_resume_finish(tmp_path):
    run_dir = str(tmp_path / "run")
    # 800 of the smoke config's 1,200 steps: killed at the 400-step checkpoint (replay.min_size: no
    # update yet), resumed for 200 updates per seed, one periodic evaluation (600) and the final one.
    # The seeds are vmapped as the smoke config says; "auto"'s unrolled seeds on the CPU are the same
    # state and update (tests/test_train_common.py checks vmap_seeds' unroll against jax.vmap, and
    # tests/test_perf.py compiles and runs the unrolled smoke update).
    total = 800
    command = functools.partial(_command, run_dir, f"--config.total_env_steps={total}")
    first_checkpoint = train_until_first_checkpoint_then_kill(command(), run_dir)
    assert 0 < first_checkpoint < total

    resumed = run_command(command("--config.resume=True"), timeout=900)
    assert resumed.returncode == 0, output_tail(resumed)

    for seed in (0, 1):
        updates = records(run_dir, seed, "update")
        steps = [r["env_step"] for r in updates]
        assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated records after resume
        assert steps[-1] == total
        assert all(r["updates_per_seed"] >= 0 for r in updates)
        late = [r for r in updates if r["env_step"] > 400]
        assert late and all("loss/rl" in r and r["loss/rl"] == r["loss/rl"] for r in late)  # finite, present
        assert records(run_dir, seed, "train_episode"), "training episodes are logged per seed"
        evals = records(run_dir, seed, "eval")
        assert evals and all(r["episodes"] == 2 for r in evals)
        final = records(run_dir, seed, "final_eval")
        assert len(final) == 1 and final[0]["episodes"] == 4 and len(final[0]["returns"]) == 4
        assert os.path.isdir(os.path.join(run_dir, "tensorboard", f"seed_{seed}"))
    for name in ("config.json", "versions.json", "final_eval.json"):
        assert os.path.exists(os.path.join(run_dir, name))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["num_seeds"] == 2
    with open(os.path.join(run_dir, "versions.json")) as f:  # the launcher's one cpu_settings.apply() call
        assert set(json.load(f)["cpu_settings"]) == {"xla_convolutions_on_eigen", "glibc_malloc"}
    assert checkpoint_steps(run_dir)[-1] == total

    # A finished run's latest checkpoint can be evaluated on its own, from the run's config.json; a
    # config.json of another config_version is refused before anything is restored.
    result = evaluate_latest_checkpoint(run_dir, episodes=2, step=total)
    assert len(result["returns"]) == 2 and all(len(r) == 2 for r in result["returns"])
    config_path = os.path.join(run_dir, "config.json")
    with open(config_path) as f:
        saved = f.read()
    with open(config_path, "w") as f:
        json.dump({k: v for k, v in json.loads(saved).items() if k != "config_version"}, f)
    old = run_launch_script("evaluate.py", f"--run_dir={run_dir}", "--episodes=2")
    assert old.returncode != 0 and "config_version None" in old.stderr and "Traceback" not in old.stderr, old.stderr
    with open(config_path, "w") as f:
        f.write(saved)

    # The report reads the trainer's own run directory: both seeds finished and scored at the budget,
    # from the 4-episode final evaluation (more episodes than evaluate.py's 2 above).
    from psrl_jax.analysis.report import ReportOptions, build_report

    report, warnings = build_report([run_dir], str(tmp_path / "report"), ReportOptions(reps=20))
    assert warnings == [
        f"Atari runs are scored at step(s) [{total}], the published rows at 100,000 (the Atari 100k budget)"
    ]
    with open(report) as f:
        text = f.read()
    assert f"| 2/2 | {total:,} | {total:,} | complete |" in text
    finals = [np.mean(records(run_dir, seed, "final_eval")[0]["returns"]) for seed in range(2)]
    assert f"{np.mean(finals):,.1f} ± {np.std(finals):,.1f} (n=2)" in text

    # Starting again without resume must not overwrite the run.
    clash = run_command(command(), timeout=300)
    assert clash.returncode != 0 and "resume" in clash.stderr

    # A corrupted checkpoint gives a clear error and is left as it was.
    state_dir = os.path.join(run_dir, "checkpoints", str(total), "state")
    victims = []
    for root, _, files in os.walk(state_dir):
        victims += [os.path.join(root, f) for f in files if "manifest" in f or f.startswith("_METADATA")]
    assert victims
    for victim in victims:
        with open(victim, "wb") as f:
            f.write(b"garbage")
    before = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    corrupted = run_command(command("--config.resume=True"), timeout=300)
    assert corrupted.returncode != 0
    assert "corrupted" in corrupted.stderr or "could not be restored" in corrupted.stderr
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == before
    for victim in victims:
        with open(victim, "rb") as f:
            assert f.read() == b"garbage"

    # A plain Rainbow run has no correspondence to draw: a clear error, before any restore.
    figure = run_launch_script("visualize.py", f"--run_dir={run_dir}", f"--out={tmp_path / 'fig.png'}", timeout=300)
    assert figure.returncode != 0 and "correspondence module" in figure.stderr, figure.stderr[-3000:]


def test_psrl_smoke_two_seeds_kill_resume_finish(tmp_path):
    """rainbow_psrl:smoke, 2 vmapped seeds: every PSRL term logged per seed, finite; BatchNorm
    statistics, EMA target and PSRL modules survive a kill and resume."""
    run_dir = str(tmp_path / "psrl")
    # 500 of the smoke config's 800 steps: killed at the 400-step checkpoint (replay.min_size: no
    # update yet), resumed for 100 steps of updates (100 per seed, a quarter of the smoke run's; they
    # are most of this test's time on a 2-core CPU). No periodic evaluation (the Rainbow run above
    # checks those); the final one runs.
    total = 500
    command = functools.partial(
        _command,
        run_dir,
        f"--config.total_env_steps={total}",
        "--config.eval.every_steps=0",
        config="configs/rainbow_psrl.py:smoke",
    )
    first_checkpoint = train_until_first_checkpoint_then_kill(command(), run_dir)
    assert 0 < first_checkpoint < total
    resumed = run_command(command("--config.resume=True"), timeout=900)
    assert resumed.returncode == 0, output_tail(resumed)
    terms = ("loss/cat_local", "loss/cat_global", "loss/aat_local", "loss/aat_global", "loss/internal")
    for seed in (0, 1):
        updates = [r for r in records(run_dir, seed, "update") if r["updates_per_seed"] > 0]
        assert updates and updates[-1]["env_step"] == total
        for record in updates:
            for name in (*terms, "loss/psrl", "loss/rl", "psrl/flow_magnitude", "psrl/internal_flow_magnitude"):
                assert name in record and math.isfinite(record[name]), (name, record)
        assert updates[-1]["psrl/flow_magnitude"] > 0  # the correspondence module has learned something
        assert len(records(run_dir, seed, "final_eval")) == 1
    assert checkpoint_steps(run_dir)[-1] == total

    # The learned correspondences of seed 1 can be drawn from the latest checkpoint.
    figure_path = str(tmp_path / "fig.png")
    flags = (f"--run_dir={run_dir}", "--seed_index=1", "--samples=2", f"--out={figure_path}")
    figure = run_launch_script("visualize.py", *flags)
    assert figure.returncode == 0, output_tail(figure)
    assert os.path.exists(figure_path) and os.path.exists(str(tmp_path / "fig.json"))
    import matplotlib.image

    assert matplotlib.image.imread(figure_path).ndim == 3
    with open(tmp_path / "fig.json") as f:
        drawn = json.load(f)
    samples = drawn["samples"]
    assert len(samples) == 2
    for sample in samples:
        for kind in ("external", "internal"):
            assert math.isfinite(sample[f"{kind}_mean_flow_magnitude"]), sample
    frames = 4  # rainbow_psrl's frame stack: the external summary counts every frame's pair
    pool = drawn["pool"]
    assert pool["external"]["pairs"] % frames == 0 and pool["external"]["pairs"] >= frames
    assert pool["internal"]["pairs"] <= pool["samples"]
    for kind in ("external", "internal"):
        assert all(math.isfinite(v) for v in pool[kind].values()), pool
