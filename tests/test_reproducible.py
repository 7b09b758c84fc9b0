"""The same seed on the same machine gives the same metrics (timing fields aside)."""

import json
import os

import pytest

from configs import rainbow
from psrl_jax.train.trainer import train

pytestmark = pytest.mark.slow
TIMING = {"env_steps_per_s_all_seeds", "updates_per_s_all_seeds", "agent_steps_per_s_all_seeds", "seconds"}


def _short_config(run_dir, seed):
    c = rainbow.get_config("smoke")
    c.seed = seed
    c.run_dir = run_dir
    c.total_env_steps = 560
    c.replay.min_size = 400
    c.eval.every_steps = 0
    c.eval.final_episodes = 2
    c.eval.max_episode_frames = 1200
    c.log.every_steps = 80
    c.log.tensorboard = False
    c.log.progress_bar = False
    c.checkpoint.every_steps = 0
    return c


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics", "seed_0.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    first = _metrics(train(_short_config(str(tmp_path / "a"), seed=5)))
    second = _metrics(train(_short_config(str(tmp_path / "b"), seed=5)))
    assert any(r["kind"] == "update" and "loss/rl" in r for r in first)
    assert first == second
    other = _metrics(train(_short_config(str(tmp_path / "c"), seed=6)))
    assert other != first
