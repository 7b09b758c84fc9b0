"""Helpers of the end-to-end tests: launch a training script, read its run directory, kill it."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_command(script, run_dir, *extra, config):
    """`python launch/<script> --config <config>` with 2 seeds into run_dir, no progress bar."""
    return [
        sys.executable,
        f"launch/{script}",
        "--config",
        config,
        "--config.num_seeds=2",
        f"--config.run_dir={run_dir}",
        "--config.log.progress_bar=False",
        *extra,
    ]


def host_devices_env(devices):
    """The environment of a subprocess whose JAX sees `devices` CPU devices, keeping the XLA_FLAGS the
    tests run with (tests/conftest.py)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def run_command(command, timeout=600):
    """Runs `command` (a list, e.g. from launch_command) from the repository root to completion and
    returns the CompletedProcess (stdout and stderr captured as text) for the caller to check,
    success or the expected failure."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_launch_script(script, *flags, timeout=600):
    """run_command of `python launch/<script> <flags>`."""
    return run_command([sys.executable, f"launch/{script}", *flags], timeout=timeout)


def output_tail(process):
    """The last few thousand characters of a finished process's stdout and stderr, for assert messages."""
    return process.stdout[-3000:] + process.stderr[-3000:]


def evaluate_latest_checkpoint(run_dir, episodes, step):
    """Runs launch/evaluate.py on run_dir (episodes per seed, as many envs) and returns the JSON it
    writes for the checkpoint at `step`."""
    flags = (f"--run_dir={run_dir}", f"--episodes={episodes}", f"--max_parallel_envs={episodes}")
    evaluation = run_launch_script("evaluate.py", *flags)
    assert evaluation.returncode == 0, output_tail(evaluation)
    with open(os.path.join(run_dir, f"evaluation_{step}_{episodes}ep.json")) as f:
        return json.load(f)


def records(run_dir, seed, kind):
    with open(os.path.join(run_dir, "metrics", f"seed_{seed}.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


# The record fields that measure time; two runs of the same seed agree on every other field.
TIMING_FIELDS = {"env_steps_per_s_all_seeds", "updates_per_s_all_seeds", "agent_steps_per_s_all_seeds", "seconds"}


def records_without_timing(run_dir, seed, run_info=True):
    """Every record of a seed with its TIMING_FIELDS left out; run_info=False also leaves out the
    run_info record (replay size, env details and the devices the seeds are placed on)."""
    with open(os.path.join(run_dir, "metrics", f"seed_{seed}.jsonl")) as f:
        rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in f]
    return [r for r in rows if run_info or r["kind"] != "run_info"]


def checkpoint_steps(run_dir):
    path = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def train_until_first_checkpoint_then_kill(command, run_dir):
    """Start `command`, SIGKILL it once its first checkpoint is complete; return that step."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not checkpoint_steps(run_dir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert process.poll() is None, process.stdout.read().decode()[-3000:]
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)  # an interrupted run: no clean shutdown
    process.wait()
    return checkpoint_steps(run_dir)[-1]
