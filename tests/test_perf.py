"""Device peaks for MFU, and launch/benchmark.py end to end on the smoke config (JSON fields, trace)."""

import glob
import json
import os
import subprocess
import sys
import types

import pytest
from run_helpers import ROOT, host_devices_env

from psrl_jax.perf import TFLOP, cpu_peak_flops, host_info, peak_flops


def test_cpu_peak_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("model name\t: X\ncpu MHz\t\t: 2500.0\nflags\t\t: fpu sse avx2 fma avx512f\n")
    assert cpu_peak_flops(str(path), cores=2) == pytest.approx(2 * 2.5e9 * 64)
    path.write_text("cpu MHz\t\t: 2000.0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_peak_flops(str(path), cores=4) == pytest.approx(4 * 2.0e9 * 32)
    assert cpu_peak_flops(str(tmp_path / "missing")) is None


def test_host_info_names_the_cpu_by_model_isa_cores_and_memory(tmp_path):
    """Two processors' lines: the first one's fields are reported; the ISA is the widest vector unit."""
    cpuinfo, meminfo = tmp_path / "cpuinfo", tmp_path / "meminfo"
    processor = "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
    processor += "model name\t: AMD EPYC\ncpu MHz\t\t: 2445.4\nflags\t\t: fpu sse2 avx {isa} fma\n\n"
    cpuinfo.write_text(processor.format(i=0, model=17, isa="avx2 avx512f") + processor.format(i=1, model=1, isa=""))
    meminfo.write_text("MemTotal:       24683620 kB\nMemFree:        14003600 kB\n")
    info = host_info(str(cpuinfo), str(meminfo))
    cpus = len(os.sched_getaffinity(0))
    expected = dict(cpu_model="AMD EPYC", cpu_family_model="25/17", vector_isa="avx512f", cpus=cpus, memory_gib=23.5)
    assert info == expected
    cpuinfo.write_text(processor.format(i=0, model=1, isa="avx2"))
    assert host_info(str(cpuinfo), str(meminfo))["vector_isa"] == "avx2"
    cpuinfo.write_text(processor.format(i=0, model=1, isa="").replace("avx ", "").replace("sse2 ", ""))
    assert host_info(str(cpuinfo), str(meminfo))["vector_isa"] == "none"
    missing = host_info(str(tmp_path / "no_cpuinfo"), str(tmp_path / "no_meminfo"))
    assert missing == dict(cpu_model=None, cpu_family_model=None, vector_isa=None, cpus=cpus, memory_gib=None)


@pytest.mark.parametrize(
    ("kind", "dtype", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "float32", 494.7),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 PCIe", "float32", 378.0),
        ("NVIDIA H200", "bfloat16", 989.4),
        ("NVIDIA H200 NVL", "float32", 417.5),
    ],
)
def test_gpu_peaks_dense_tensor_core(kind, dtype, expected):
    device = types.SimpleNamespace(platform="gpu", device_kind=kind)
    peak, source = peak_flops(device, dtype)
    assert peak == pytest.approx(expected * TFLOP) and "dense" in source


def test_unknown_gpu_has_no_peak_and_says_so():
    peak, source = peak_flops(types.SimpleNamespace(platform="gpu", device_kind="Some GPU"), "float32")
    assert peak is None and "no peak known" in source


@pytest.mark.slow
def test_benchmark_measures_dmc_configs(tmp_path):
    """A DMC config (it names env.task) goes through the same measurement: the SAC update, acting, and
    the backend's rendered env steps, counted in env steps (action_repeat physics steps each)."""
    from run_helpers import output_tail, run_launch_script

    out = tmp_path / "bench.json"
    flags = ("--config=configs/sac.py:smoke", "--config.env.backend=dm_control", "--repeats=2", f"--out={out}")
    result = run_launch_script("benchmark.py", *flags, f"--config.run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, output_tail(result)
    bench = json.loads(out.read_text())
    assert bench["task"] == "cartpole_swingup" and "game" not in bench
    assert bench["action_repeat"] == 8 and bench["updates_per_s_all_seeds"] > 0
    assert bench["flops_per_update_per_seed"] > 1e8  # a pixel SAC update: conv encoder, batch of frames
    assert bench["raw_env_steps_per_s_all_seeds"] > 0 and bench["collect_steps_per_s_all_seeds"] > 0
    assert 0 < bench["mfu"] < 1
    # projected = env steps per agent step / (collect + env step + update per agent step)
    per_step = (
        1 / bench["collect_steps_per_s_all_seeds"]
        + bench["action_repeat"] / bench["raw_env_steps_per_s_all_seeds"]
        + bench["update_dispatch_seconds"] / bench["update_every"]
    )
    assert bench["projected_env_steps_per_s_per_seed"] == pytest.approx(bench["action_repeat"] / per_step)


def test_benchmark_loops_refuses_dmc_configs_before_compiling(tmp_path):
    from run_helpers import output_tail, run_launch_script

    result = run_launch_script("benchmark.py", "--config=configs/sac.py:smoke", "--loops", timeout=120)
    assert result.returncode != 0 and "DMC configs have the host loop only" in output_tail(result)


def _benchmark(tmp_path, name, devices, *flags, repeats=1):
    out = tmp_path / f"{name}.json"
    env = host_devices_env(devices)
    result = subprocess.run(
        [
            sys.executable,
            "launch/benchmark.py",
            "--config=configs/rainbow.py:smoke",
            f"--repeats={repeats}",
            f"--out={out}",
            f"--config.run_dir={tmp_path / name}",
            *flags,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_benchmark_smoke_writes_json_and_trace_and_sharded_counts_per_device_flops(tmp_path):
    """rainbow:smoke through launch/benchmark.py: one seed on one device (with a trace), then two seeds
    sharded over two (forced host) devices, whose per-device program is one seed's."""
    trace = tmp_path / "trace"
    bench = _benchmark(tmp_path, "one_device", 1, "--config.num_seeds=1", f"--trace_dir={trace}", repeats=2)
    assert bench["num_seeds"] == 1 and bench["updates_per_s_all_seeds"] > 0
    # the timed dispatches start after the untimed ones, whose times are kept
    assert len(bench["update_warmup_seconds"]) == 3 and all(t > 0 for t in bench["update_warmup_seconds"])
    assert bench["flops_per_update_per_seed"] > 1e6
    # MFU is achieved / peak, a fraction
    assert bench["mfu"] == pytest.approx(bench["achieved_flops_per_s"] / bench["device_peak_flops_per_s"])
    assert 0 < bench["mfu"] < 1
    assert bench["update_memory_bytes"]["argument"] > 0 and bench["host_peak_rss_bytes"] > 0
    assert bench["replay_bytes_per_transition"] > 84 * 84
    assert bench["host"] == host_info()  # the machine the figures are from
    assert glob.glob(str(trace / "seeds_1" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    # the traced update's time per named scope (psrl_jax/profile_scopes.py): Rainbow's scopes are there
    scopes = bench["time_by_scope"]
    names = {row["scope"] for row in scopes["rows"]}
    assert any(name.startswith("distributional_loss") for name in names) and "optimizer" in names
    assert any(row["backward"] for row in scopes["rows"])
    assert sum(row["fraction"] for row in scopes["rows"]) == pytest.approx(1.0)

    sharding = _benchmark(tmp_path, "sharding", 2, "--config.num_seeds=2", "--sharding")
    assert bench["seed_devices"] == 1 and sharding["seed_devices"] == 2
    # Sharded, the compiled update is one device's (1 of the 2 seeds): per seed it is the same work.
    assert sharding["flops_per_update_per_seed"] == pytest.approx(bench["flops_per_update_per_seed"], rel=0.02)
    assert sharding["shard_map_collectives"] == 0  # each device its own seeds (SeedAxis.jit)
    assert sharding["shard_map_ms_per_dispatch"] > 0 and sharding["spmd_partitioner_ms_per_dispatch"] > 0


@pytest.mark.slow
def test_compare_updates_times_each_way_of_holding_the_seed_axis(tmp_path):
    from run_helpers import output_tail, run_launch_script

    # One launch, every way: `none` times one seed, the others two seeds per dispatch. (vmap_seeds'
    # single-seed path, which indexes the axis away, is tests/test_train_common.py's.)
    out = tmp_path / "compare.json"
    flags = ("configs/rainbow.py:smoke", "--seed_axis=none,vmap,vmap_seeds,unroll", "--num_seeds=2", "--repeats=1")
    trace = f"--trace_dir={tmp_path / 'trace'}"  # the launcher keeps its traces; here, with the test's files
    result = run_launch_script("compare_updates.py", *flags, f"--out={out}", "--scopes=1", "--scope_depth=1", trace)
    assert result.returncode == 0, output_tail(result)
    results = json.loads(out.read_text())
    assert results["host"] == host_info()
    rows = results["rows"]
    expected = [("none", 1), ("vmap", 2), ("vmap_seeds", 2), ("unroll", 2)]
    assert [(r["seed_axis"], r["num_seeds"]) for r in rows] == expected
    for row in rows:  # --scopes: each config's traced update per named scope, cut to one name
        names = {r["scope"] for r in row["time_by_scope"]["rows"]}
        assert {"distributional_loss", "optimizer"} <= names and not any("/" in name for name in names)
    for i in range(len(rows)):  # each row's trace, kept under --trace_dir
        assert glob.glob(str(tmp_path / "trace" / f"config_{i}" / "plugins" / "profile" / "*" / "*.xplane.pb")), i
    for row in rows:  # parameters are counted over every seed of the dispatch
        assert row["median_update_seconds"] > 0
        assert row["trainable_params"] == row["num_seeds"] * rows[0]["trainable_params"]
    # two seeds per dispatch, batched or one after another: twice one seed's work either way (to 5%:
    # XLA fuses the batched, unrolled and single-seed programs differently)
    for row in rows[1:]:
        assert row["flops_per_update"] == pytest.approx(2 * rows[0]["flops_per_update"], rel=0.05)
        assert row["median_seconds_per_seed_update"] == pytest.approx(row["median_update_seconds"] / 2)

    bad = run_launch_script("compare_updates.py", "configs/rainbow.py:smoke", "--seed_axis=pmap")
    assert bad.returncode != 0 and "unknown ['pmap']" in output_tail(bad)


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--seeds_list=1,two",), "--seeds_list must be integers"),
        (("--out=/nonexistent-dir/b.json",), "its directory does not exist"),
        (("--seeds_list=1,2", "--config.agent.batch_size=0"), "batch_size"),
        (("--config.env.game=Breakuot",), "did you mean Breakout"),
    ],
)
def test_benchmark_checks_flags_and_configs_before_measuring(flags, message):
    """A mistake found after minutes of measuring would lose them: every flag and every configuration
    the benchmark will build is checked first, and reported in one line."""
    from run_helpers import output_tail, run_launch_script

    result = run_launch_script("benchmark.py", "--config=configs/rainbow.py:smoke", *flags, timeout=120)
    tail = output_tail(result)
    assert result.returncode != 0 and message in tail and "Traceback" not in tail and "measured" not in tail, tail


@pytest.mark.parametrize(
    "spec, message",
    [
        ("configs/rainbow.py@agent.batchsize=32", 'Did you mean "batch_size"'),
        ("configs/rainbow.py@env.game=Breakuot", "did you mean Breakout"),
        ("configs/sac.py@env.task=walker_wlak", "did you mean walker_walk"),
        ("configs/rainbow.py:nosuch", "unknown variant 'nosuch'"),
        ("configs/rainbow.py@num_seeds=two", "num_seeds=two"),
    ],
)
def test_compare_updates_loads_every_spec_before_compiling(spec, message):
    """The first spec is valid: a mistake in a later one must stop the script before it compiles."""
    from run_helpers import output_tail, run_launch_script

    result = run_launch_script("compare_updates.py", "configs/rainbow.py:smoke", spec, timeout=120)
    tail = output_tail(result)
    assert result.returncode != 0 and message in tail and "Traceback" not in tail and "compile" not in tail, tail
