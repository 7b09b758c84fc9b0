"""Learning-curve plotting reads the real run-directory format and writes a non-trivial PNG."""

import json
import os

import numpy as np
import pytest

from psrl_jax.analysis.curves import load_records, plot_learning_curves, reference_scores


def _write_run(run_dir, seeds=2):
    os.makedirs(os.path.join(run_dir, "metrics"))
    for seed in range(seeds):
        with open(os.path.join(run_dir, "metrics", f"seed_{seed}.jsonl"), "w") as f:
            for step in range(0, 5000, 1000):
                f.write(
                    json.dumps({"kind": "train_episode", "env_step": step + 7, "return": float(step + seed)}) + "\n"
                )
                f.write(json.dumps({"kind": "eval", "env_step": step, "return_mean": float(step) / 10}) + "\n")


def test_plot_writes_png_with_content(tmp_path):
    run_dir = str(tmp_path / "run")
    _write_run(run_dir)
    records = load_records(run_dir, "eval")
    assert sorted(records) == [0, 1] and len(records[0]) == 5
    out = str(tmp_path / "curve.png")
    plot_learning_curves([run_dir], out, title="t", references={"der": 300.0})
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert np.std(image) > 0.01  # not a blank canvas


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_records(str(tmp_path), "eval")


def test_reference_scores_lookup(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("game,random,der\nRoadRunner,11.5,9600.0\n")
    assert reference_scores(str(path), "roadrunner") == {"random": 11.5, "der": 9600.0}
    assert reference_scores(str(path), "Pong") == {}


def test_plot_curves_script_checks_its_input_first(tmp_path):
    """launch/plot_curves.py on the committed RoadRunner run: draws it (with a partial last metrics
    line, as a killed run leaves); a missing table, an unknown method, a DMC run, a bad run directory
    and an --out in a missing directory are one-line errors, and nothing is drawn for them."""
    import shutil
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = str(tmp_path / "rainbow")
    shutil.copytree(os.path.join(root, "docs", "runs", "rainbow-RoadRunner-100k-s0"), run)
    with open(os.path.join(run, "metrics", "seed_0.jsonl"), "a") as f:
        f.write('{"kind": "eval", "env_st')

    def plot(*args):
        command = [sys.executable, os.path.join(root, "launch", "plot_curves.py"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    out = str(tmp_path / "curve.png")
    drawn = plot(run, "--out", out)
    assert drawn.returncode == 0 and os.path.isfile(out), drawn.stderr[-2000:]
    dmc_run = os.path.join(root, "docs", "runs", "sac-cartpole_swingup-100k-s0")
    for args, message in [
        ((run, "--out", out, "--reference", str(tmp_path / "none.csv")), "is not a file"),
        ((run, "--out", out, "--methods", "der,sprr"), "sprr: no such column for RoadRunner"),
        ((run, dmc_run, "--out", out), "different games or tasks"),
        ((run, "--out", out, "--external", f"x={out}"), "--external curves are for DMC runs"),
        ((dmc_run, "--out", out, "--external", "x=/no/such.csv"), "expected LABEL=PATH"),
        ((str(tmp_path), "--out", out), "is not a run directory"),
        ((run, "--out", str(tmp_path / "missing" / "c.png")), "does not exist"),
    ]:
        failed = plot(*args)
        assert failed.returncode != 0 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr

    # DMC: the run's mean curve beside an external CSV curve and DrQ's published one.
    external = tmp_path / "other.csv"
    external.write_text("env_step,seed,return\n0,1,20.0\n50000,1,300.0\n0,2,25.0\n50000,2,350.0\n")
    dmc_out = str(tmp_path / "dmc.png")
    drawn = plot(dmc_run, "--out", dmc_out, "--external", f"other code={external}")
    assert drawn.returncode == 0 and os.path.isfile(dmc_out), drawn.stderr[-2000:]
    bad = tmp_path / "bad.csv"
    bad.write_text("step,seed,return\n0,1,2\n")
    failed = plot(dmc_run, "--out", dmc_out, "--external", f"bad={bad}")
    assert failed.returncode != 0 and "lacks the column(s) env_step" in failed.stderr, failed.stderr


def test_external_curve_reads_seeds_and_sorts_steps(tmp_path):
    from psrl_jax.analysis.curves import read_external_curve

    path = tmp_path / "c.csv"
    path.write_text("env_step,seed,return,extra\n8000,2,5.5,x\n0,2,1.0,x\n0,1,2.0,x\n")
    assert read_external_curve(str(path)) == {"2": [(0.0, 1.0), (8000.0, 5.5)], "1": [(0.0, 2.0)]}
