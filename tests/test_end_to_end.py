"""The one trainer end to end, once per domain, through its launcher with 2 vmapped seeds and every PSRL
term on: rainbow_psrl:smoke (Atari) and sac_psrl:smoke (DMC) train, evaluate and checkpoint, are
killed, resume and finish; then the latest checkpoint is evaluated, its correspondences drawn and the
run reported. The PSRL runs carry the most state through a checkpoint (BatchNorm statistics, EMA
target, PSRL modules, the prediction-step replay); plain Rainbow and SAC run the same trainer and the
same checkpoint code (tests/test_multihost.py resumes a Rainbow run across layouts,
tests/test_checkpoint.py round-trips every agent state). The DMC runs render with dm_control, as the
smoke configs do (configs/sac.py says why)."""

import functools
import json
import math
import os
from dataclasses import dataclass

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

PSRL_TERMS = ("loss/psrl", "loss/cat_local", "loss/cat_global", "loss/aat_local", "loss/aat_global", "loss/internal")


@dataclass(frozen=True)
class Domain:
    script: str
    config: str
    flags: tuple  # evaluation and env settings on top of the smoke config
    total: int  # config.total_env_steps of the run
    checkpoint: int  # the smoke config's checkpoint.every_steps: where the first run is killed
    action_repeat: int  # env steps per agent step in the records (Atari counts agent steps)
    rl_terms: tuple
    evaluate_episodes: int  # per seed, in launch/evaluate.py's replay of the last checkpoint


DOMAINS = {
    # 450 of the smoke config's 800 steps: replay.min_size is 400, so the kill at the 400-step
    # checkpoint comes before any update and the resumed run makes every update (50 steps, most of
    # this run's time on a 2-core CPU). The periodic evaluation at 400 runs before the kill.
    # Evaluation episodes end at 100 agent steps instead of the smoke config's 1,000 (RoadRunner
    # under the untrained policy plays to the cap): 2 episodes per seed took 2 s instead of 10.
    "atari": Domain(
        script="atari.py",
        config="configs/rainbow_psrl.py:smoke",
        flags=("--config.eval.max_episode_frames=400",),
        total=450,
        checkpoint=400,
        action_repeat=1,
        rl_terms=("loss/rl",),
        evaluate_episodes=2,
    ),
    # 1,400 of the smoke config's 2,400 env steps (cartpole_swingup, action repeat 8): 125 random
    # agent steps (replay.min_size, the first episode), updates from there, the kill at the 1,200-step
    # checkpoint (after 25 agent steps of updates) and 25 more after the resume. One episode per seed
    # in each evaluation (125 renders of about 17 ms each): several episodes per env are the Atari
    # run's and test_dmc_env.py's. CURL's stack padding (the Atari run uses the default, zeros).
    "dmc": Domain(
        script="dmc.py",
        config="configs/sac_psrl.py:smoke",
        flags=(
            "--config.replay.min_size=125",
            "--config.eval.episodes=1",
            "--config.eval.final_episodes=1",
            "--config.env.stack_padding=first_frame",
        ),
        total=1400,
        checkpoint=1200,
        action_repeat=8,
        rl_terms=("loss/critic", "loss/actor"),
        evaluate_episodes=1,
    ),
}


def _finite(record, name):
    return name in record and math.isfinite(record[name])


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_psrl_two_seeds_kill_resume_finish_evaluate_draw_report(tmp_path, name):
    domain = DOMAINS[name]
    run_dir = str(tmp_path / "run")
    budget = f"--config.total_env_steps={domain.total}"
    command = functools.partial(launch_command, domain.script, run_dir, budget, *domain.flags, config=domain.config)
    assert train_until_first_checkpoint_then_kill(command(), run_dir) == domain.checkpoint
    resumed = run_command(command("--config.resume=True"), timeout=900)
    assert resumed.returncode == 0, output_tail(resumed)

    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    assert config["num_seeds"] == 2 and config["total_env_steps"] == domain.total
    if name == "dmc":
        assert config["env"]["task"] == "cartpole_swingup" and config["env"]["backend"] == "dm_control"
        assert config["env"]["action_repeat"] == domain.action_repeat  # resolved from the task and recorded
        assert config["agent"]["encoder"] == "framewise" and config["env"]["stack_padding"] == "first_frame"
    with open(os.path.join(run_dir, "versions.json")) as f:  # the launcher's one cpu_settings.apply() call
        assert set(json.load(f)["cpu_settings"]) == {"xla_convolutions_on_eigen", "glibc_malloc"}
    with open(os.path.join(run_dir, "final_eval.json")) as f:
        final = json.load(f)
    assert final["env_step"] == domain.total
    assert len(final["return_mean_per_seed"]) == 2 and all(map(math.isfinite, final["return_mean_per_seed"]))
    assert checkpoint_steps(run_dir)[-1] == domain.total

    learning_starts = config["replay"]["min_size"] * domain.action_repeat
    per_seed = []
    for seed in (0, 1):
        by_kind = {kind: records(run_dir, seed, kind) for kind in ("update", "train_episode", "eval", "final_eval")}
        for kind, rows in by_kind.items():
            steps = [r["env_step"] for r in rows]
            assert all(s % domain.action_repeat == 0 and 0 < s <= domain.total for s in steps), (kind, steps)
            # Nothing is logged twice across the kill and resume.
            assert steps == sorted(steps) and len(steps) == len(set(steps)), (kind, steps)
        updates = by_kind["update"]
        assert updates[-1]["env_step"] == domain.total and all(r["updates_per_seed"] >= 0 for r in updates)
        late = [r for r in updates if r["env_step"] > learning_starts]
        assert late and late[-1]["updates_per_seed"] > 0
        for record in late:  # every loss term logged per seed, finite
            for term in (*domain.rl_terms, *PSRL_TERMS, "psrl/flow_magnitude"):
                assert _finite(record, term), (term, record)
        assert late[-1]["psrl/flow_magnitude"] > 0  # the correspondence module has learned something
        episodes = by_kind["train_episode"]
        assert episodes and all(math.isfinite(r["return"]) for r in episodes)
        if name == "dmc":  # cartpole_swingup's 1,000 control steps, in agent steps
            assert all(r["length"] == 1000 // domain.action_repeat for r in episodes), episodes
        evals = by_kind["eval"]
        assert [r["env_step"] for r in evals] == [domain.checkpoint]  # before the kill
        assert all(r["episodes"] == config["eval"]["episodes"] == len(r["returns"]) for r in evals)
        (final_record,) = by_kind["final_eval"]
        assert final_record["episodes"] == config["eval"]["final_episodes"] == len(final_record["returns"])
        assert all(map(math.isfinite, final_record["returns"]))
        assert final_record["return_mean"] == pytest.approx(final["return_mean_per_seed"][seed])
        assert os.path.isdir(os.path.join(run_dir, "tensorboard", f"seed_{seed}"))
        per_seed.append(by_kind)
    # The two vmapped seeds are different agents: their losses are not copies (nor, on DMC, where
    # every episode scores, their returns; the Atari smoke runs score 0 on RoadRunner).
    losses = [[r["loss/psrl"] for r in s["update"] if "loss/psrl" in r] for s in per_seed]
    assert losses[0] != losses[1]
    if name == "dmc":
        returns = [[x for r in s["eval"] + s["final_eval"] for x in r["returns"]] for s in per_seed]
        assert returns[0] != returns[1]

    # launch/evaluate.py replays the latest checkpoint on its own, from the run's config.json.
    episodes = domain.evaluate_episodes
    result = evaluate_latest_checkpoint(run_dir, episodes=episodes, step=domain.total)
    assert result["env_step"] == domain.total and result["episodes_per_seed"] == episodes
    assert len(result["returns"]) == 2
    assert all(len(r) == episodes and all(map(math.isfinite, r)) for r in result["returns"])

    _draws_the_learned_correspondences(tmp_path, run_dir, config)
    _reports_the_run(tmp_path, run_dir, config, name)
    if name == "atari":  # launcher refusals that read a real run directory (one domain suffices: same code)
        _refuses_to_overwrite_or_restore_a_corrupted_checkpoint(run_dir, command)


def _draws_the_learned_correspondences(tmp_path, run_dir, config):
    """launch/visualize.py draws seed 1's correspondences from the latest checkpoint."""
    figure_path = str(tmp_path / "fig.png")
    flags = (f"--run_dir={run_dir}", "--seed_index=1", "--samples=2", f"--out={figure_path}")
    figure = run_launch_script("visualize.py", *flags)
    assert figure.returncode == 0, output_tail(figure)
    import matplotlib.image

    assert matplotlib.image.imread(figure_path).ndim == 3
    with open(tmp_path / "fig.json") as f:
        drawn = json.load(f)
    assert drawn["env_step"] == config["total_env_steps"] and len(drawn["samples"]) == 2
    for sample in drawn["samples"]:
        for kind in ("external", "internal"):
            assert math.isfinite(sample[f"{kind}_mean_flow_magnitude"]), sample
            assert 0.0 <= sample[f"{kind}_outside_fraction"] <= 1.0, sample
    pool = drawn["pool"]  # the pool summary: every frame pair the loss counts
    frames = config["env"]["frame_stack"]
    assert pool["external"]["pairs"] % frames == 0 and pool["external"]["pairs"] >= frames
    assert pool["internal"]["pairs"] <= pool["samples"]
    for kind in ("external", "internal"):
        assert all(math.isfinite(v) for v in pool[kind].values()), pool
        assert 0.0 <= pool[kind]["outside_fraction"] <= 1.0
    if "task" in config["env"]:  # DMC frames are centre-cropped as the encoder saw them
        assert all(sample["valid"] for sample in drawn["samples"]), drawn["samples"]
        crop = feature = config["env"]["crop_size"]
        assert crop < config["env"]["image_size"]  # so the crop is not a no-op
        for stride in config["agent"]["encoder_strides"]:  # valid 3x3 convolutions (CURL's encoder)
            feature = (feature - 3) // stride + 1
        assert drawn["flow_units"].startswith(f"feature-map pixels ({feature}x{feature};")


def _reports_the_run(tmp_path, run_dir, config, name):
    """launch/report.py's builder reads the trainer's own run directory: both seeds finished and
    scored at the run's budget, mean ± std of the final evaluations (4 or 1 episodes per seed)."""
    from psrl_jax.analysis.report import ReportOptions, build_report

    total = config["total_env_steps"]
    dmc_budgets = (total,) if name == "dmc" else ReportOptions().dmc_budgets
    report, warnings = build_report(
        [run_dir], str(tmp_path / "report"), ReportOptions(reps=20, dmc_budgets=dmc_budgets)
    )
    finals = [np.mean(records(run_dir, seed, "final_eval")[0]["returns"]) for seed in range(2)]
    score = f"{np.mean(finals):,.1f} ± {np.std(finals):,.1f} (n=2)"
    with open(report) as f:
        text = f.read()
    if name == "dmc":
        assert warnings == []
        assert f"| cartpole_swingup | {score} |" in text
    else:
        assert warnings == [
            f"Atari runs are scored at step(s) [{total}], the published rows at 100,000 (the Atari 100k budget)"
        ]
        assert f"| 2/2 | {total:,} | {total:,} | complete |" in text and score in text


def _refuses_to_overwrite_or_restore_a_corrupted_checkpoint(run_dir, command):
    # Starting again without resume must not overwrite the run.
    clash = run_command(command(), timeout=300)
    assert clash.returncode != 0 and "resume" in clash.stderr

    # A corrupted checkpoint gives a clear error and is left as it was.
    total = checkpoint_steps(run_dir)[-1]
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
