"""psrl_jax/train/finite_guard.py: a non-finite loss, gradient norm or parameter stops a run at the next
log point or checkpoint, naming the env step, seed and term; earlier checkpoints stay and none is
written from the bad state. The end-to-end cases inject NaN into a real state-SAC run's update."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sac
from psrl_jax.agents.sac import SACAgent
from psrl_jax.train.finite_guard import NonFiniteError, leaf_finiteness, nonfinite_metrics
from psrl_jax.train.trainer import Trainer


def test_nonfinite_metrics_finds_nan_and_inf_in_guarded_terms_only():
    means = {
        "loss/critic": np.array([1.0, np.nan, 2.0]),
        "optim/grad_norm": np.array([np.inf, 1.0, 1.0]),
        "q/mean": np.array([np.nan, np.nan, np.nan]),  # not a loss or gradient norm: not guarded
        "loss/actor": np.array([-1.0, 0.0, -np.inf]),
    }
    found = nonfinite_metrics(means)
    expected = [
        (row, name, float(means[name][row]))
        for name in sorted(means)
        if name.startswith(("loss/", "optim/"))
        for row in range(3)
        if not math.isfinite(means[name][row])
    ]
    assert (
        [(r, n) for r, n, _ in found]
        == [(r, n) for r, n, _ in expected]
        == [
            (2, "loss/actor"),
            (1, "loss/critic"),
            (0, "optim/grad_norm"),
        ]
    )


def test_leaf_finiteness_flags_each_floating_leaf_and_skips_integers():
    tree = {
        "a": {"kernel": jnp.ones((3, 2)).at[1, 1].set(jnp.nan), "bias": jnp.zeros(2)},
        "count": jnp.int32(7),
        "b": jnp.array([1.0, jnp.inf], jnp.bfloat16),
    }
    flags = jax.jit(leaf_finiteness)(tree)
    assert {k: bool(v) for k, v in flags.items()} == {"a/bias": True, "a/kernel": False, "b": False}


def _state_sac_config(run_dir, log_every):
    c = sac.get_config("state")
    c.seed = 3
    c.run_dir = str(run_dir)
    c.total_env_steps = 1600  # 200 agent steps at cartpole_swingup's action repeat 8
    c.replay.min_size = 50  # updates from env step 400
    c.agent.batch_size = 16
    c.agent.hidden = (32, 32)
    c.eval.every_steps = 0
    c.eval.final_episodes = 1
    c.log.every_steps = log_every
    c.log.progress_bar = False
    c.log.tensorboard = False
    c.checkpoint.every_steps = 400
    c.checkpoint.keep = 10
    return c


POISON_FROM_UPDATE = 70  # the update at agent step 120 = env step 960


@pytest.mark.parametrize(
    "poisoned, log_every, stop_step, term",
    [
        ("params", 400, 1200, "state arrays (actor_params/params/"),  # found at the log point
        ("loss", 400, 1200, "loss/critic = nan"),  # the window's mean loss
        ("params", 1600, 1200, "state arrays (actor_params/params/"),  # no log point: found before the checkpoint
    ],
)
def test_a_diverged_run_stops_and_keeps_its_earlier_checkpoints(
    tmp_path, monkeypatch, poisoned, log_every, stop_step, term
):
    original = SACAgent.update_many

    def update_many(self, agent_state, *args):
        agent_state, replay_state, metrics = original(self, agent_state, *args)
        bad = agent_state.update_step >= POISON_FROM_UPDATE
        if poisoned == "params":
            actor = jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), agent_state.actor_params)
            agent_state = agent_state.replace(actor_params=actor)
        else:
            metrics = {**metrics, "loss/critic": jnp.where(bad, jnp.nan, metrics["loss/critic"])}
        return agent_state, replay_state, metrics

    monkeypatch.setattr(SACAgent, "update_many", update_many)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError) as raised:
        Trainer(_state_sac_config(run_dir, log_every)).run()
    message = str(raised.value)
    assert f"env step {stop_step}" in message and "seed 3 (index 0)" in message and term in message, message
    assert "checkpoints at env steps [400, 800] are kept" in message, message

    assert sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit()) == [400, 800]
    assert not (run_dir / "final_eval.json").exists()
    with open(run_dir / "metrics" / "seed_0.jsonl") as f:
        updates = [r for r in map(json.loads, f) if r["kind"] == "update"]
    assert [r["env_step"] for r in updates] == list(range(log_every, stop_step + 1, log_every))
    if poisoned == "loss":  # the diverged window's record is on disk, with its NaN
        assert math.isnan(updates[-1]["loss/critic"]) and math.isfinite(updates[-2]["loss/critic"])


def test_a_run_whose_update_is_slow_on_the_cpu_says_what_the_rest_costs(tmp_path, monkeypatch, capsys):
    """The trainer's wiring of common.SlowUpdateNotice: with the threshold at 0 s every run is "slow",
    and the line counts the updates left after the second dispatch (updates start at agent step 50
    of 200, one per step: 200 - 52 = 148 left)."""
    from psrl_jax.train import common

    monkeypatch.setattr(common, "SLOW_UPDATE_S", 0.0)
    monkeypatch.setattr(common.jax, "default_backend", lambda: "cpu")
    config = _state_sac_config(tmp_path / "run", log_every=400)
    Trainer(config).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if "per update" in line]
    assert len(lines) == 1 and "the 148 updates left would take about" in lines[0], lines
