"""Scores, rliable statistics and the report on synthetic run directories in the real format."""

import glob
import json
import os
import subprocess
import sys
import zlib

import matplotlib.image
import numpy as np
import pytest
import scipy.stats
from rliable import metrics as rliable_metrics

from psrl_jax.analysis import published, statistics
from psrl_jax.analysis.report import ReportOptions, build_report, gather
from psrl_jax.analysis.runs import NotARunDirectory, load_run
from psrl_jax.config import save_json_atomic
from psrl_jax.train.run_dir import MetricsLogger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- scores


def test_human_normalized_score_uses_the_standard_table():
    table = published.atari_table()
    assert len(table) == 26
    row = table["RoadRunner"]
    assert published.human_normalized(row["random"], "RoadRunner") == pytest.approx(0.0)
    assert published.human_normalized(row["human"], "road_runner") == pytest.approx(1.0)
    score = 5000.0
    expected = (score - 11.5) / (7845.0 - 11.5)  # RoadRunner random / human
    assert published.human_normalized(score, "RoadRunner") == pytest.approx(expected)
    with pytest.raises(KeyError, match="no random/human scores"):
        published.human_normalized(1.0, "NotAGame")


def test_published_dmc_table_has_both_budgets():
    table = published.dmc_table()
    assert table[("cartpole_swingup", 100_000)]["drq"] == (759.0, 92.0)
    assert ("walker_walk", 500_000) in table and len(table) == 12


def test_aggregates_match_independent_formulas():
    rng = np.random.default_rng(0)
    scores = rng.gamma(1.0, 1.0, size=(7, 26))
    mean, median, iqm, gap = statistics.aggregate_metrics(scores)
    assert iqm == pytest.approx(scipy.stats.trim_mean(scores.ravel(), 0.25))
    assert mean == pytest.approx(scores.mean())
    assert median == pytest.approx(np.median(scores.mean(axis=0)))
    assert gap == pytest.approx(np.mean(1 - np.minimum(scores, 1)))
    # known answers: all at or above human -> no gap; all at random -> gap 1
    assert statistics.aggregate_metrics(np.full((3, 4), 2.0))[3] == 0.0
    assert statistics.aggregate_metrics(np.zeros((3, 4)))[3] == 1.0
    # IQM ignores the outer quartiles: one huge outlier does not move it much, the mean it does
    spiky = np.ones((4, 5))
    spiky[0, 0] = 1e6
    assert statistics.aggregate_metrics(spiky)[2] == pytest.approx(1.0)
    assert statistics.aggregate_metrics(spiky)[0] > 1e4


def test_probability_of_improvement_known_answers_and_rliable_agreement():
    rng = np.random.default_rng(1)
    low, high = rng.uniform(0, 1, (5, 6)), rng.uniform(2, 3, (5, 6))
    assert statistics.pairwise_probability_of_improvement(high, low) == 1.0
    assert statistics.pairwise_probability_of_improvement(low, high) == 0.0
    assert statistics.pairwise_probability_of_improvement(low, low) == 0.5
    # one game won, one lost, one tied (identical) -> (1 + 0 + 0.5) / 3
    x = np.array([[3.0, 0.0, 1.0]])
    y = np.array([[1.0, 2.0, 1.0]])
    assert statistics.pairwise_probability_of_improvement(x, y) == pytest.approx(0.5)
    a, b = rng.normal(0, 1, (6, 8)), rng.normal(0.3, 1, (4, 8))
    b[:, 0] = a[:4, 0]  # some ties across methods
    ours = statistics.pairwise_probability_of_improvement(a, b)
    assert ours == pytest.approx(rliable_metrics.probability_of_improvement(a, b))
    assert ours + statistics.pairwise_probability_of_improvement(b, a) == pytest.approx(1.0)


def test_confidence_intervals_contain_the_estimate_and_shrink_with_more_seeds():
    rng = np.random.default_rng(2)
    few = rng.normal(1.0, 0.5, (5, 10))
    many = rng.normal(1.0, 0.5, (80, 10))
    points, intervals = statistics.interval_estimates({"few": few, "many": many}, reps=300, seed=0)
    for name in ("few", "many"):
        low, high = intervals[name]
        assert np.all(low <= points[name] + 1e-12) and np.all(points[name] <= high + 1e-12)
    width = {n: intervals[n][1] - intervals[n][0] for n in ("few", "many")}
    assert np.all(width["many"] < width["few"])
    poi = statistics.probability_of_improvement({"few": few, "many": many}, [("few", "many")], reps=300, seed=0)
    p, low, high = poi[("few", "many")]
    assert low <= p <= high and 0 < high - low < 0.5


def test_seed_consistency_against_numpy():
    scores = np.arange(12, dtype=float).reshape(4, 3) ** 1.5
    rows = statistics.seed_consistency(scores)
    assert [n for n, _, _ in rows] == [1, 2, 3, 4]
    n, mean, std = rows[2]
    assert mean == pytest.approx(scores[:3].mean()) and std == pytest.approx(scores[:3].mean(axis=1).std())


# ------------------------------------------------------------------------------------ run directories


def write_run(run_dir, *, name, seed, num_seeds, budget, returns, game=None, task=None, finished=True, evals=None):
    """A run directory as the trainer writes it: config.json, metrics/seed_<i>.jsonl through the
    trainer's MetricsLogger, final_eval.json when finished. returns[i][step] = mean eval return."""
    env = {"game": game} if game else {"task": task}
    os.makedirs(run_dir, exist_ok=True)
    save_json_atomic(
        os.path.join(run_dir, "config.json"),
        {"name": name, "seed": seed, "num_seeds": num_seeds, "total_env_steps": budget, "env": env},
    )
    logger = MetricsLogger(run_dir, num_seeds, tensorboard=False)
    for i in range(num_seeds):
        logger.write(i, "run_info", 0, {"task_id": game or task})
        for step, value in sorted(returns[i].items()):
            logger.write(i, "train_episode", step - 1, {"return": value * 0.9, "length": 100})
            kind = "final_eval" if finished and step == budget else "eval"
            episodes = 100 if kind == "final_eval" else 10
            logger.write(i, kind, step, {"return_mean": value, "return_std": 1.0, "episodes": episodes})
    logger.close()
    if finished:
        save_json_atomic(os.path.join(run_dir, "final_eval.json"), {"env_step": budget})
    return run_dir


GAMES = ("Breakout", "Pong", "RoadRunner")


def atari_runs(root, method, offset, seeds=(0, 5), per_run=(5, 5), budget=100_000):
    """Seeds of one method spread over several vmapped run directories, per game."""
    dirs = []
    rng = np.random.default_rng(zlib.crc32(method.encode()))
    for game in GAMES:
        human = published.atari_table()[game]["human"]
        for first, count in zip(seeds, per_run, strict=True):
            returns = [
                {step: float(human * (offset + 0.1 * rng.normal()) * step / budget) for step in (50_000, budget)}
                for _ in range(count)
            ]
            run_dir = os.path.join(root, method, game, f"s{first}x{count}")
            write_run(run_dir, name=method, seed=first, num_seeds=count, budget=budget, returns=returns, game=game)
            dirs.append(run_dir)
    return dirs


def _assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert np.std(image) > 0.01, f"{path} is blank"


def test_report_on_synthetic_atari_runs_writes_every_table_and_figure(tmp_path):
    dirs = atari_runs(str(tmp_path / "runs"), "rainbow_psrl", offset=1.0)
    dirs += atari_runs(str(tmp_path / "runs"), "rainbow", offset=0.5)
    out = str(tmp_path / "report")
    path, warnings = build_report(dirs, out, ReportOptions(reps=200))
    assert warnings == []
    text = open(path).read()
    for heading in ("### Runs", "Human-normalised score per game", "Aggregate human-normalised", "Probability of"):
        assert heading in text
    assert "| rainbow_psrl | Breakout | 10/10 |" in text
    assert "SPR (published) | 1 |" in text and "| rainbow_psrl | 10 |" in text
    for figure in ("atari_curves", "atari_aggregates", "atari_probability_of_improvement", "atari_seed_consistency"):
        assert f"figures/{figure}.png" in text
        _assert_png(os.path.join(out, "figures", f"{figure}.png"))
    # the IQM in the table is the trimmed mean of the HNS of all 10 seeds x 3 games
    hns = []
    for game in GAMES:
        for d in dirs:
            if "/rainbow_psrl/" in d and f"/{game}/" in d:
                hns += [published.human_normalized(s.score_at(100_000), game) for s in load_run(d).seeds]
    iqm = scipy.stats.trim_mean(np.array(hns), 0.25)
    row = next(line for line in text.splitlines() if line.startswith("| rainbow_psrl | 10 |"))
    assert f"{iqm:.3f} [" in row.split("|")[5]
    # the method that is better on every game wins the probability of improvement
    poi_row = next(line for line in text.splitlines() if line.startswith("| X = rainbow_psrl |"))
    assert "| 1.00 [1.00, 1.00] |" in poi_row
    # consistency table has n = 1..10
    assert "n=10" in text


def test_incomplete_seeds_are_flagged_and_left_out_of_averages(tmp_path):
    root = str(tmp_path / "runs")
    dirs = atari_runs(root, "rainbow", offset=0.5)
    # rainbow_psrl: one group finished, the other killed at 50k; and a run of a different budget
    dirs += atari_runs(root, "rainbow_psrl", offset=1.0, seeds=(0,), per_run=(5,))
    for game in GAMES:
        killed = os.path.join(root, "rainbow_psrl", game, "s5x5")
        write_run(
            killed,
            name="rainbow_psrl",
            seed=5,
            num_seeds=5,
            budget=100_000,
            returns=[{50_000: 99999.0}] * 5,
            game=game,
            finished=False,
        )
        dirs.append(killed)
    out = str(tmp_path / "report")
    path, warnings = build_report(dirs, out, ReportOptions(reps=100))
    text = open(path).read()
    assert any("unfinished (rainbow_psrl on Breakout reached 50,000 of 100,000)" in w for w in warnings)
    assert any("5 of 10 seeds evaluated at step 100,000" in w for w in warnings)
    assert "| rainbow_psrl | Breakout | 5/10 | 100,000 | 100,000 | incomplete |" in text
    assert "+5†" in text  # five seeds shown only as flagged latest scores
    # the 99999 returns of the killed seeds are not averaged in: the table's mean equals the finished seeds'
    finished = [s.score_at(100_000) for s in load_run(os.path.join(root, "rainbow_psrl", "Breakout", "s0x5")).seeds]
    cell = next(line for line in text.splitlines() if line.startswith("| Breakout |")).split("|")[3]
    assert f"{np.mean(finished):,.1f} ±" in cell and "99,999" not in cell
    # with include_incomplete they are averaged, and the report says so
    path, _ = build_report(dirs, str(tmp_path / "report2"), ReportOptions(reps=100, include_incomplete=True))
    text2 = open(path).read()
    assert "this report includes them" in text2 and "| rainbow_psrl | 10 |" in text2


def test_mismatched_budgets_missing_seeds_and_duplicates_are_warned(tmp_path):
    root = str(tmp_path / "runs")
    a = write_run(
        os.path.join(root, "a"), name="m1", seed=0, num_seeds=2, budget=40_000,
        returns=[{40_000: 10.0}, {40_000: 20.0}], game="Pong",
    )  # fmt: skip
    b = write_run(
        os.path.join(root, "b"), name="m2", seed=0, num_seeds=1, budget=100_000,
        returns=[{100_000: 5.0}], game="Pong",
    )  # fmt: skip
    c = write_run(
        os.path.join(root, "c"), name="m2", seed=0, num_seeds=1, budget=100_000,
        returns=[{100_000: 6.0}], game="Pong",
    )  # fmt: skip
    os.remove(os.path.join(a, "metrics", "seed_1.jsonl"))  # a seed that never wrote metrics
    _, warnings = build_report([a, b, c], str(tmp_path / "out"), ReportOptions(reps=50))
    text = "\n".join(warnings)
    assert "seeds [1] of 2 wrote no metrics" in text
    assert "scored at different steps [40000, 100000]" in text
    assert "seed 0 appears in several run directories" in text


def test_dmc_runs_report_returns_at_100k_and_500k(tmp_path):
    root = str(tmp_path / "runs")
    dirs = []
    for method, level in (("sac_psrl", 800.0), ("sac", 600.0)):
        for task in ("cartpole_swingup", "walker_walk"):
            steps = (100_000, 500_000) if method == "sac" else (100_000,)
            returns = [{s: level + 10 * i + s / 1e4 for s in steps} for i in range(3)]
            budget = max(steps)
            d = os.path.join(root, method, task)
            dirs.append(write_run(d, name=method, seed=0, num_seeds=3, budget=budget, returns=returns, task=task))
    path, _ = build_report(dirs, str(tmp_path / "out"), ReportOptions(reps=50))
    text = open(path).read()
    assert "### Episode return at 100k environment steps" in text and "### Episode return at 500k" in text
    line = next(li for li in text.split("at 500k")[1].splitlines() if li.startswith("| cartpole_swingup"))
    assert "not reached (100,000)" in line  # sac_psrl ran 100k only
    # At a budget between its evaluations, sac (past it, at 500k) is told apart from one that stopped short.
    path300, _ = build_report(dirs, str(tmp_path / "out300"), ReportOptions(reps=50, dmc_budgets=(300_000,)))
    between = next(li for li in open(path300).read().splitlines() if li.startswith("| cartpole_swingup"))
    assert "| no evaluation there (reached 500,000) | not reached (100,000) |" in between, between
    assert "868 ± 10" in line  # DrQ published at 500k
    assert "820.0 ± 8.2 (n=3)" in text.split("at 100k")[1]  # sac_psrl: 800 + {0,10,20} + 10
    # CURL's Table 1 columns are marked as another budget (agent steps); DrQ's and SPR's are not.
    assert "| task | sac | sac_psrl | CURL*† | DrQ* | SPR* | Pixel SAC*† | State SAC*† |" in text
    assert "† CURL's Table 1: CURL's code counts agent steps" in text
    for figure in ("dmc_curves", "dmc_seed_consistency"):
        _assert_png(os.path.join(str(tmp_path / "out"), "figures", f"{figure}.png"))


def test_evaluate_py_files_count_when_they_have_more_episodes(tmp_path):
    d = write_run(
        str(tmp_path / "run"), name="rainbow", seed=3, num_seeds=2, budget=10_000,
        returns=[{10_000: 1.0}, {10_000: 2.0}], game="Pong", finished=False,
    )  # fmt: skip
    save_json_atomic(
        os.path.join(d, "evaluation_10000_200ep.json"),
        {"env_step": 10_000, "episodes_per_seed": 200, "return_mean_per_seed": [7.0, 8.0]},
    )
    run = load_run(d)
    assert [s.seed for s in run.seeds] == [3, 4]  # global seed = config.seed + index
    assert [s.score_at(10_000) for s in run.seeds] == [7.0, 8.0]
    assert not run.finished


def test_partial_last_line_is_ignored_but_corruption_is_an_error(tmp_path):
    d = write_run(str(tmp_path / "run"), name="m", seed=0, num_seeds=1, budget=10, returns=[{10: 1.0}], game="Pong")
    path = os.path.join(d, "metrics", "seed_0.jsonl")
    with open(path, "a") as f:
        f.write('{"kind": "eval", "env_st')  # killed mid-write
    assert load_run(d).seeds[0].score_at(10) == 1.0
    with open(path, "a") as f:
        f.write("\n" + json.dumps({"kind": "eval", "env_step": 20, "return_mean": 2.0}) + "\n")
    with pytest.raises(NotARunDirectory, match="record 4 is not valid JSON"):
        load_run(d)


def test_cli_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "report.py"), str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "is not a run directory" in result.stderr and "config.json" in result.stderr


def test_cli_checks_notes_out_and_config_json_before_reading_runs(tmp_path):
    run = write_run(str(tmp_path / "run"), name="m", seed=0, num_seeds=1, budget=10, returns=[{10: 1.0}], game="Pong")
    (tmp_path / "file").write_text("")

    def report(*args):
        command = [sys.executable, os.path.join(REPO, "launch", "report.py"), *args]
        return subprocess.run(command, capture_output=True, text=True)

    for args, message in [
        ((run, "--out", str(tmp_path / "o"), "--notes", str(tmp_path / "none.md")), "--notes"),
        ((run, "--out", str(tmp_path / "file")), "is a file"),
    ]:
        failed = report(*args)
        assert failed.returncode != 0 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write("{not json")
    failed = report(run, "--out", str(tmp_path / "o"))
    assert "config.json is not valid JSON" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr


def test_project_results_regenerate_from_committed_run_records(tmp_path):
    """docs/RESULTS.md is the report on docs/runs/: the committed records still load and score. At a
    DMC budget DrQ's table lacks (32k), its column holds its curve's point there (274.4 ± 24.0 on
    cartpole_swingup, data/drq_planet_curve.csv); at 100k its table's 759 ± 92."""
    runs = sorted(glob.glob(os.path.join(REPO, "docs", "runs", "*")))
    assert runs, "docs/runs/ holds the project's run records"
    options = ReportOptions(reps=20, atari_step=40_000, dmc_budgets=(32_000, 100_000))
    path, warnings = build_report(runs, str(tmp_path), options)
    text = open(path).read()
    assert "| rainbow | RoadRunner | 1/1 | 40,000 | 40,000 | complete |" in text
    assert "14,022.0 ± 0.0 (n=1)" in text  # launch/evaluate.py's 100 episodes beat the 10-episode eval
    assert any("unfinished" in w for w in warnings)
    rows = [line for line in text.splitlines() if line.startswith("| cartpole_swingup |")]
    at_32k, at_100k = rows[0].split(" | "), rows[1].split(" | ")
    drq = text.splitlines()[text.splitlines().index(rows[0]) - 2].split(" | ").index("DrQ*")
    assert at_32k[drq] == "274 ± 24" and at_100k[drq] == "759 ± 92", (at_32k, at_100k)


def test_runs_under_one_name_with_different_methods_are_flagged(tmp_path):
    """Pixel SAC seed 2 (docs/runs) ran with orthogonal init and no trunk tanh, unlike seeds 0 and 1
    (whose config.json predates both fields: LeCun init, tanh); the runs were renamed by hand to keep
    them apart. Under one name the report says so; the two sac_psrl seeds, written before and after
    env.stack_padding and psrl.warp_padding existed, are the same method and are not flagged."""
    import shutil

    runs = os.path.join(REPO, "docs", "runs")
    renamed = str(tmp_path / "sac-s2")
    shutil.copytree(os.path.join(runs, "sac-cartpole_swingup-100k-s2"), renamed)
    with open(os.path.join(renamed, "config.json")) as f:
        config = json.load(f)
    lecun = os.path.join(runs, "sac-cartpole_swingup-100k-s0")
    with open(os.path.join(lecun, "config.json")) as f:
        lecun_name = json.load(f)["name"]
    assert config["name"] != lecun_name
    config["name"] = lecun_name
    save_json_atomic(os.path.join(renamed, "config.json"), config)
    same = [os.path.join(runs, f"sac_psrl-cartpole_swingup-100k-s{seed}") for seed in (0, 1)]
    _, warnings = gather([lecun, renamed, *same])
    flagged = [w for w in warnings if "share a name but not a config" in w]
    assert len(flagged) == 1, warnings
    assert "agent.weight_init: 'lecun' vs 'orthogonal'" in flagged[0]
    assert "agent.trunk_tanh: True vs False" in flagged[0]


def test_a_run_directory_given_twice_counts_once(tmp_path):
    run = write_run(str(tmp_path / "run"), name="m", seed=0, num_seeds=1, budget=10, returns=[{10: 1.0}], game="Pong")
    entries, warnings = gather([run, run + "/"])
    (entry,) = entries.values()
    assert entry.expected_seeds == 1 and list(entry.seeds) == [0]
    assert any("given more than once" in w for w in warnings)
    assert not any("missing" in w or "several run directories" in w for w in warnings), warnings


def test_drq_published_curve_is_drqs_ten_seed_means():
    """data/drq_planet_curve.csv against DrQ's data/dmc_planet_bench.csv (denisyarats/drq dd040f1),
    cartpole_swingup over its 10 seeds: means 182.0 / 274.4 / 759.4 at 16k / 32k / 96k environment
    steps, lowest seed 572.0 at 96k (read off that file)."""
    from psrl_jax.analysis import published

    curve = {int(p[0]): p for p in published.drq_curve()["cartpole_swingup"]}
    assert [curve[s][1] for s in (16_000, 32_000, 96_000)] == [182.0, 274.4, 759.4]
    assert curve[96_000][3] == 572.0 and curve[96_000][5] == 10
    assert max(curve) <= 500_000
