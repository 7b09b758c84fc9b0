"""One run over 2 processes (jax.distributed on localhost, CPU devices, gloo) equals the 1-process run,
and the 1-process run with its seeds sharded over 4 (forced host) CPU devices equals the run that
keeps them on one device.

Each process is a real `launch/atari.py` with --coordinator/--num_processes/--process_id, as on a
cluster; the reference is one process holding all 4 devices. XLA_FLAGS must be set before JAX
starts, so everything runs in subprocesses. Atari stands for both domains: the trainer, its seed
axis, checkpoints and per-process evaluation are the same code for DMC, whose one domain-specific
part, each process seeding its own envs as rows of the whole pool, tests/test_dmc_env.py checks.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from run_helpers import ROOT, checkpoint_steps, host_devices_env, records_without_timing

# 4 seeds: 400 steps of random warm-up, then 32 updates; a checkpoint at 416 and at the end.
ATARI = [
    "configs/rainbow.py:smoke",
    "--config.num_seeds=4",
    "--config.shard_seeds=on",  # as `auto` would; named so that config.json equals the 1-process run's
    "--config.total_env_steps=432",
    "--config.replay.capacity=1000",
    "--config.eval.every_steps=0",
    "--config.eval.final_episodes=1",
    "--config.eval.max_episode_frames=400",
    "--config.log.every_steps=16",
    "--config.log.tensorboard=False",
    "--config.log.progress_bar=False",
    "--config.checkpoint.every_steps=416",
]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _launch(script, args, run_dir, processes, devices_per_process, *extra, timeout=600):
    """Runs launch/<script> as `processes` cooperating processes; returns [(returncode, stderr)]."""
    command = [sys.executable, f"launch/{script}", "--config", *args, f"--config.run_dir={run_dir}", *extra]
    if processes == 1:
        run = subprocess.run(
            command, cwd=ROOT, env=host_devices_env(devices_per_process), capture_output=True, text=True
        )
        return [(run.returncode, run.stderr)]
    port = _free_port()
    running = [
        subprocess.Popen(
            [*command, f"--coordinator=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"],
            cwd=ROOT,
            env=host_devices_env(devices_per_process),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for process in running:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in running:
                p.kill()
            raise
        results.append((process.returncode, stderr))
    return results


def _assert_ok(results):
    for code, stderr in results:
        assert code == 0, stderr[-3000:]


def _assert_same_metrics(a_dir, b_dir, seeds):
    """Every record of every seed equal (floats to float32 rounding)."""
    for seed in range(seeds):
        a, b = records_without_timing(a_dir, seed), records_without_timing(b_dir, seed)
        assert [r["kind"] for r in a] == [r["kind"] for r in b], seed
        assert any(r["kind"] == "update" and any(k.startswith("loss") for k in r) for r in a)
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                if isinstance(x[key], float):
                    assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (seed, key, x, y)
                else:
                    assert x[key] == y[key], (seed, key, x, y)


def _checkpoint_header(run_dir, step):
    with open(os.path.join(run_dir, "checkpoints", str(step), "header", "metadata")) as f:
        return json.load(f)


def _copy_without_last_checkpoint(source, target):
    """A run stopped after its first checkpoint: the last checkpoint and final_eval.json removed."""
    shutil.copytree(source, target)
    shutil.rmtree(os.path.join(target, "checkpoints", str(checkpoint_steps(target)[-1])))
    os.remove(os.path.join(target, "final_eval.json"))


# The 1-process runs: one process holding 4 devices trains ATARI's 4 seeds sharded over them ("on",
# as `auto` places them; the reference of the 2-process run) and on one device ("off"). It records
# the shardings of the state after every collect/update dispatch, restores each run's final
# checkpoint, and compiles the collect and update programs to look for collectives. In-process (the
# trainer's methods are wrapped), so its config mirrors ATARI field by field; the config.json
# comparison below fails if the two drift apart.
ONE_PROCESS = """
import json, re, sys
from psrl_jax import cpu_settings
cpu_settings.apply()  # as the launchers whose runs this one is compared with
import jax
import jax.numpy as jnp
import numpy as np
from configs import rainbow
from psrl_jax.train.trainer import Trainer

root = sys.argv[1]
assert jax.device_count() == 4

def config(mode, resume=False):
    c = rainbow.get_config("smoke")
    c.num_seeds, c.shard_seeds, c.run_dir, c.resume = 4, mode, f"{root}/{mode}", resume
    c.total_env_steps = 432  # 400 steps of random warm-up, then 32 updates
    c.replay.capacity = 1000
    c.eval.every_steps = 0
    c.eval.final_episodes = 1
    c.eval.max_episode_frames = 400
    c.log.every_steps = 16
    c.log.tensorboard = c.log.progress_bar = False
    c.checkpoint.every_steps = 416
    return c

def placement(tree):
    return sorted({("/".join(map(str, getattr(x.sharding, "spec", ()))), len(x.sharding.device_set))
                   for x in jax.tree.leaves(tree)})

result, states = {}, {}
for mode in ("on", "off"):
    trainer = Trainer(config(mode))
    seen = set()
    for name in ("collect_policy", "update_fn"):
        def spy(*args, _fn=getattr(trainer, name)):
            out = _fn(*args)
            seen.update(map(tuple, placement(out)))
            return out
        setattr(trainer, name, spy)
    trainer.run()
    restorer = Trainer(config(mode, resume=True))
    state, _ = restorer.restore_latest()
    if mode == "on":  # the collectives in the compiled per-step programs
        put = restorer.seeds.put
        step = [put(np.zeros((4, 1, 84, 84), np.uint8))]
        step += [put(np.zeros((4, 1), t)) for t in (np.float32, np.float32, bool)]
        programs = {"collect_policy": restorer.collect_policy.lower(state, *step),
                    "update": restorer.update_fn.lower(state, jnp.float32(0.5))}
        pattern = r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\("
        result["collectives"] = {name: re.findall(pattern, p.compile().as_text()) for name, p in programs.items()}
    restorer.envs.close()
    states[mode] = jax.device_get(state)
    result[mode] = {"during_training": sorted(seen), "restored": placement(state)}
on, off = jax.tree.leaves(states["on"]), jax.tree.leaves(states["off"])
exact = [np.array_equal(a, b) for a, b in zip(on, off) if not np.issubdtype(np.asarray(a).dtype, np.floating)]
floats = [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in zip(on, off)
          if np.issubdtype(np.asarray(a).dtype, np.floating) and np.size(a)]
result["exact_leaves"], result["exact_equal"] = len(exact), sum(map(bool, exact))
result["float_leaves"] = len(floats)
result["float_bitwise_equal"] = sum(bool(np.array_equal(a, b)) for a, b in floats)
result["float_max_abs_diff"] = max(float(np.max(np.abs(a - b))) for a, b in floats)
result["float_max_scaled_diff"] = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) for a, b in floats)
print("RESULT " + json.dumps(result))
"""


def _assert_sharded_equals_unsharded(root, run):
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])

    # Sharded: every array of the state keeps its seed axis split over the 4 devices, across steps
    # and through checkpoint restore. Off: one device.
    assert result["on"]["during_training"] == [["seeds", 4]], result
    assert result["on"]["restored"] == [["seeds", 4]], result
    assert {n for _, n in result["off"]["during_training"]} == {1}, result
    assert {n for _, n in result["off"]["restored"]} == {1}, result
    # Each device runs only its own seeds (SeedAxis.jit: shard_map): no collective in the compiled
    # collect and update. Left to the SPMD partitioner, the vmapped convolutions were all-gathered.
    assert result["collectives"] == {"collect_policy": [], "update": []}, result["collectives"]
    with open(root / "on" / "versions.json") as f:
        assert json.load(f)["seed_placement"]["seed_devices"] == 4

    # Same seeds, same trajectories: every integer array of the final state (replay frames, actions,
    # indices, PRNG keys, step counters) and every episode/evaluation return is identical. Float
    # values agree to float32 rounding, not bit for bit: the partitioned per-device program (one seed
    # per device) and the 4-seed program are compiled separately and XLA:CPU fuses and orders their
    # sums differently (measured: about 1e-7 relative in losses, Q values and gradient norms; a
    # 1-seed unsharded run differs from both by as much, as vmapped vs single runs do, docs/USAGE.md).
    for seed in range(4):
        on = records_without_timing(root / "on", seed, run_info=False)  # run_info: the seed placement
        off = records_without_timing(root / "off", seed, run_info=False)
        assert any(r["kind"] == "update" and "loss/rl" in r for r in on)
        assert [r for r in on if r["kind"] == "final_eval"]
        assert len(on) == len(off)
        for a, b in zip(on, off, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (seed, key, a, b)
                else:
                    assert a[key] == b[key], (seed, key, a, b)
    assert result["exact_equal"] == result["exact_leaves"], result
    assert result["float_max_scaled_diff"] < 1e-5, result  # measured: 4e-7 of each array's largest value


@pytest.mark.slow
def test_atari_sharded_run_equals_unsharded_and_two_process_runs_and_resumes_across_layouts(tmp_path):
    command = [sys.executable, "-c", textwrap.dedent(ONE_PROCESS), str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env=host_devices_env(4), capture_output=True, text=True, timeout=900)
    _assert_sharded_equals_unsharded(tmp_path, run)

    one, two = str(tmp_path / "on"), str(tmp_path / "two")
    _assert_ok(_launch("atari.py", ATARI, two, processes=2, devices_per_process=2))

    # Seeds 0-1 were stepped by process 0's envs and devices, seeds 2-3 by process 1's: the same
    # envs, keys and per-device programs as the 1-process run, so the same records.
    _assert_same_metrics(one, two, seeds=4)
    for name in ("final_eval.json", "config.json"):
        with open(os.path.join(one, name)) as f, open(os.path.join(two, name)) as g:
            expected, got = json.load(f), json.load(g)
        if name == "config.json":
            expected.pop("run_dir"), got.pop("run_dir")
        assert expected == got, name
    with open(os.path.join(two, "versions.json")) as f:
        assert json.load(f)["seed_placement"]["processes"] == 2
    assert checkpoint_steps(one) == checkpoint_steps(two) == [416, 432]
    assert _checkpoint_header(one, 432) == _checkpoint_header(two, 432)  # episode counts gathered

    # Resume across layouts: the 1-process checkpoint continued by 2 processes, and the 2-process
    # checkpoint by 1 process; both continue from step 416 alike (envs restart on resume).
    one_then_two, two_then_one = str(tmp_path / "one_then_two"), str(tmp_path / "two_then_one")
    _copy_without_last_checkpoint(one, one_then_two)
    _copy_without_last_checkpoint(two, two_then_one)
    _assert_ok(_launch("atari.py", ATARI, one_then_two, 2, 2, "--config.resume=True"))
    _assert_ok(_launch("atari.py", ATARI, two_then_one, 1, 4, "--config.resume=True"))
    _assert_same_metrics(one_then_two, two_then_one, seeds=4)
    for run_dir in (one_then_two, two_then_one):
        assert os.path.exists(os.path.join(run_dir, "metrics", "seed_3.jsonl.after_416"))  # set aside, not lost
        assert checkpoint_steps(run_dir) == [416, 432]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.num_seeds=3"], "num_seeds=3 to be a multiple of the 2 devices"),
        (["--config.shard_seeds=off"], "spans 2 processes (jax.distributed): use 'auto' or 'on'"),
        (["--config.loop=fused"], "config.loop='fused' runs in one process"),
    ],
)
def test_multi_process_refusals(tmp_path, extra, message):
    args = ["configs/rainbow.py:smoke", "--config.num_seeds=2", *extra]
    for code, stderr in _launch("atari.py", args, str(tmp_path / "run"), 2, 1, timeout=300):
        assert code != 0 and message in stderr, stderr[-2000:]
    assert not checkpoint_steps(str(tmp_path / "run"))
