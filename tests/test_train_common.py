"""What the trainers share (psrl_jax/train/common.py): interval crossings and the throughput
window, checked against brute force and a controlled clock; the seed-axis vmap, against jax.vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.config import ConfigError
from psrl_jax.train import common
from psrl_jax.train.common import LogWindow, crossed, resolve_seed_batching, vmap_seeds


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


def test_eta_uses_the_current_windows_rate_and_none_during_warm_up(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "time", clock)
    window = LogWindow(num_seeds=2)
    window.add(env_steps=1000, updates=0)  # warm-up: random actions, fast
    clock.now += 1.0
    assert window.eta_s(100_000) is None
    window.reset()
    window.add(env_steps=40, updates=40)  # training: 40 steps in 20 s (+ 30 s paused for an evaluation)
    clock.now += 20.0
    with window.paused():
        clock.now += 30.0
    assert window.eta_s(99_000) == pytest.approx(99_000 / 40 * 20.0)


@pytest.mark.parametrize(
    "seconds, text",
    [(3.2, "3 s"), (89, "89 s"), (91, "2 min"), (5399, "90 min"), (5401, "1.5 h"), (3 * 86400, "3.0 days")],
)
def test_format_duration(seconds, text):
    assert common.format_duration(seconds) == text


def test_progress_bar_has_no_whole_run_average_eta():
    """tqdm's remaining time (elapsed<remaining) averages the warm-up into the training rate; the bar
    leaves it out and shows the postfix's eta instead."""
    import ml_collections

    config = ml_collections.ConfigDict({"log": {"progress_bar": True}})
    bar = common.progress_bar(config, total=100, initial=0, desc="x")
    bar.update(50)
    bar.set_postfix(eta="3 min", refresh=False)
    text = str(bar)
    bar.close()
    assert "50/100" in text and "eta=3 min" in text and "<" not in text, text


def test_slow_update_notice_projects_from_the_second_dispatch(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "time", clock)
    logged = []
    monkeypatch.setattr(common, "log", logged.append)
    notice = common.SlowUpdateNotice(backend="cpu")
    assert notice.after_dispatch(jnp.zeros(2), updates=4, remaining_updates=100_000) is None  # compiles: not timed
    clock.now += 4 * 12.0  # 12 s per update
    line = notice.after_dispatch(jnp.zeros(2), updates=4, remaining_updates=100_000)
    assert "12 s per update" in line and "100,000 updates left" in line and "13.9 days" in line  # 1.2e6 s
    assert logged == [line]
    clock.now += 1000.0
    assert notice.after_dispatch(jnp.zeros(2), updates=4, remaining_updates=9_996) is None  # once only

    fast = common.SlowUpdateNotice(backend="cpu")
    fast.after_dispatch(jnp.zeros(2), 4, 100)
    clock.now += 4 * 9.0
    assert fast.after_dispatch(jnp.zeros(2), 4, 100) is None
    accelerator = common.SlowUpdateNotice(backend="gpu")
    accelerator.after_dispatch(jnp.zeros(2), 4, 100)
    clock.now += 4 * 60.0
    assert accelerator.after_dispatch(jnp.zeros(2), 4, 100) is None and logged == [line]


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


def _per_seed(state, batch, scale):
    """A per-seed function with a pytree state, a batched input, an unbatched one and random draws."""
    key, k_noise = jax.random.split(state["key"])
    out = jnp.tanh(batch @ state["w"]) * scale + jax.random.normal(k_noise, (batch.shape[0],))
    return {"key": key, "w": state["w"] + 0.1 * jnp.sum(out)}, {"mean": jnp.mean(out), "out": out}


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("num_seeds", [1, 2, 3])
def test_vmap_seeds_equals_jax_vmap(num_seeds, unroll):
    rng = np.random.default_rng(num_seeds)
    state = {
        "key": jax.random.split(jax.random.PRNGKey(0), num_seeds),
        "w": jnp.asarray(rng.normal(size=(num_seeds, 4)), jnp.float32),
    }
    batch = jnp.asarray(rng.normal(size=(num_seeds, 5, 4)), jnp.float32)
    expected = jax.jit(jax.vmap(_per_seed, in_axes=(0, 0, None)))(state, batch, 2.0)
    got = jax.jit(vmap_seeds(_per_seed, in_axes=(0, 0, None), unroll=unroll))(state, batch, 2.0)
    chex.assert_trees_all_equal_shapes_and_dtypes(expected, got)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), expected, got)


def test_vmap_seeds_squeezes_a_single_seed_instead_of_batching():
    """With one seed the compiled program has no seed axis at all (what avoids XLA:CPU's slow
    size-1-axis programs); with two it is an ordinary vmap."""

    def reduced_shapes(num_seeds):
        fn = vmap_seeds(lambda x: jnp.sum(x * x, axis=-1))
        jaxpr = jax.make_jaxpr(fn)(jnp.zeros((num_seeds, 3, 7)))
        return [eqn.invars[0].aval.shape for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "reduce_sum"]

    assert reduced_shapes(1) == [(3, 7)]
    assert reduced_shapes(2) == [(2, 3, 7)]


def test_unrolled_seeds_compile_no_grouped_convolution():
    """vmapping seeds that each have their own kernel makes XLA one grouped convolution
    (feature_group_count = S), which XLA:CPU runs slowly; unrolled, each seed has its own plain one."""

    def per_seed(kernel, images):
        out = jax.lax.conv_general_dilated(images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(out**2)

    rng = np.random.default_rng(0)
    kernels = jnp.asarray(rng.normal(size=(2, 3, 3, 4, 8)), jnp.float32)
    images = jnp.asarray(rng.normal(size=(2, 5, 9, 9, 4)), jnp.float32)
    grad = jax.grad(per_seed)

    def hlo(unroll):
        return jax.jit(vmap_seeds(grad, unroll=unroll)).lower(kernels, images).compile().as_text()

    assert "feature_group_count=2" in hlo(False)
    assert "feature_group_count" not in hlo(True)
    np.testing.assert_allclose(
        jax.jit(vmap_seeds(grad, unroll=True))(kernels, images), jax.vmap(grad)(kernels, images), rtol=1e-5, atol=1e-6
    )


def test_seed_batching_modes():
    assert resolve_seed_batching("auto", backend="cpu") == "unroll"
    assert resolve_seed_batching("auto", backend="gpu") == "vmap"
    assert resolve_seed_batching("vmap", backend="cpu") == "vmap"
    assert resolve_seed_batching("unroll", backend="gpu") == "unroll"
    with pytest.raises(ConfigError, match="seed_batching"):
        resolve_seed_batching("map")


def test_resume_truncates_metrics_and_sets_aside_a_partial_last_line(tmp_path):
    """A run killed mid-write leaves a partial last line; resume at a checkpoint keeps the records up
    to it, and moves the later ones and the partial line to seed_<i>.jsonl.after_<step>."""
    import json
    import os

    from psrl_jax.train.run_dir import metrics_path, truncate_metrics_after

    os.makedirs(tmp_path / "metrics")
    records = [{"kind": "update", "env_step": step} for step in (1000, 2000, 3000)]
    partial = '{"kind": "update", "env_st'
    with open(metrics_path(str(tmp_path), 0), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + partial)
    truncate_metrics_after(str(tmp_path), [0], 2000)
    with open(metrics_path(str(tmp_path), 0)) as f:
        assert [json.loads(line) for line in f] == records[:2]
    with open(metrics_path(str(tmp_path), 0) + ".after_2000") as f:
        assert f.read() == json.dumps(records[2]) + "\n" + partial + "\n"


def test_resume_keeps_the_run_info_it_changes(tmp_path):
    """config.json / versions.json as they were before a resume that changes them are kept as
    *.before_<step>.json; a resume that changes nothing but config.resume keeps no copy."""
    import json
    import os

    from configs import rainbow
    from psrl_jax.perf import host_info
    from psrl_jax.train.run_dir import write_run_info

    config = rainbow.get_config("smoke")
    write_run_info(str(tmp_path), config)
    config.resume = True
    write_run_info(str(tmp_path), config, resumed_at=400)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "versions.json"]
    config.eval.episodes = 7
    write_run_info(str(tmp_path), config, resumed_at=800, seed_placement={"devices": ["elsewhere"]})
    assert sorted(os.listdir(tmp_path)) == [
        "config.before_800.json",
        "config.json",
        "versions.before_800.json",
        "versions.json",
    ]
    with open(tmp_path / "config.before_800.json") as f:
        assert json.load(f)["eval"]["episodes"] != 7
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["eval"]["episodes"] == 7
    with open(tmp_path / "versions.json") as f:
        versions = json.load(f)
    assert versions["seed_placement"] == {"devices": ["elsewhere"]}
    assert versions["host"] == host_info()  # rates in the metrics depend on it (psrl_jax/perf.py)


def test_resume_without_a_checkpoint_is_refused_before_anything_is_created(tmp_path):
    """A misspelt --config.run_dir with resume, or a run killed before its first checkpoint: a clear
    error, and no directory (or checkpoints/ inside the run) appears."""
    import os

    from configs import rainbow
    from psrl_jax.train.common import open_run_dir

    config = rainbow.get_config("smoke")
    config.resume = True
    for run_dir in (tmp_path / "typo", tmp_path / "killed"):
        if run_dir.name == "killed":
            run_dir.mkdir()
            (run_dir / "config.json").write_text("{}")
        config.run_dir = str(run_dir)
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(ConfigError, match="holds no complete checkpoint"):
            open_run_dir(config, "rainbow")
        assert sorted(os.listdir(tmp_path)) == before
        assert not os.path.exists(run_dir / "checkpoints")
