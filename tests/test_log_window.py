"""The trainers' shared bookkeeping (psrl_jax/train/common.py): interval crossings and the
throughput window, checked against brute force and a controlled clock."""

import numpy as np
import pytest

from psrl_jax.train import common
from psrl_jax.train.common import LogWindow, crossed


@pytest.mark.parametrize("size", [1, 3, 4, 8, 40])
@pytest.mark.parametrize("every", [0, 5, 8, 16, 2000])
def test_crossed_matches_brute_force(size, every):
    for step in range(size, 200 + size, size):
        expected = every > 0 and any(s % every == 0 for s in range(step - size + 1, step + 1))
        assert crossed(step, size, every) == expected, (step, size, every)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_window_rates_leave_out_paused_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "time", clock)
    window = LogWindow(num_seeds=3, action_repeat=8)
    window.add(env_steps=80, updates=10, metrics={"loss": np.zeros(3)})
    clock.now += 4.0
    with window.paused():  # an evaluation: 100 s that must not dilute the rate
        clock.now += 100.0
    window.add(env_steps=80, updates=10)  # a dispatch-free step adds no metrics
    clock.now += 4.0
    rates = window.rates()
    assert rates["env_steps_per_s_all_seeds"] == pytest.approx(160 * 3 / 8.0)
    assert rates["updates_per_s_all_seeds"] == pytest.approx(20 * 3 / 8.0)
    assert rates["agent_steps_per_s_all_seeds"] == pytest.approx(160 * 3 / 8.0 / 8)
    assert len(window.metrics) == 1

    window.reset()
    clock.now += 2.0
    window.add(env_steps=4, updates=0)
    assert window.rates()["env_steps_per_s_all_seeds"] == pytest.approx(4 * 3 / 2.0)
    assert window.metrics == [] and window.updates == 0


def test_log_window_without_action_repeat_has_no_agent_rate():
    assert "agent_steps_per_s_all_seeds" not in LogWindow(num_seeds=1).rates()


def test_paused_counts_time_even_when_the_body_raises(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "time", clock)
    window = LogWindow(num_seeds=1)
    with pytest.raises(RuntimeError), window.paused():
        clock.now += 5.0
        raise RuntimeError("evaluation failed")
    assert window.paused_s == pytest.approx(5.0)
