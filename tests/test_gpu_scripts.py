"""scripts/gpu_checks.sh's own plumbing, on the CPU in seconds: which steps run, in what order, and
what the budget does. The steps are the launchers, tested elsewhere; scripts/gpu_bundle_check.sh
runs steps 0 and 4 at smoke sizes under the GPU image's Python and packages (not in CI: it builds a
venv from the package index)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_checks.sh")
# The order of the priorities: the PSRL update's cost at full size, then RoadRunner runs, then the rest.
STEP_ORDER = [
    "2_bench_rainbow_psrl",
    "7_bench_rainbow_psrl_coarse",
    "3_bench_rainbow",
    "8_roadrunner",
    "1_atari_update_cost",
    "4_dmc_update_cost",
    "5_loops",
    "6_seed_batching",
    "0_dmc_run",
]


def run_gpu_checks(tmp_path, **env):
    out = tmp_path / "out"
    environ = {
        **os.environ,
        "GPU_CHECKS_SMOKE": "1",
        "OUT": str(out),
        "TMPDIR": str(tmp_path),
        "PYTHON": sys.executable,
        **env,
    }
    result = subprocess.run(["bash", SCRIPT], env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return (out / "log.txt").read_text(), sorted(os.listdir(out))


def summary(log: str) -> dict[str, tuple[str, str]]:
    """The log's closing table: step name -> (exit status or "skipped", seconds)."""
    lines = log.split("step exit seconds\n", 1)[1].splitlines()
    return {name: (status, seconds) for name, status, seconds in (line.split() for line in lines if line.strip())}


def test_gpu_checks_runs_only_the_steps_named(tmp_path):
    log, files = run_gpu_checks(tmp_path, GPU_CHECKS_STEPS="9")  # 9 names no step
    assert "jax" in log  # the machine's header ran
    assert summary(log) == {}
    assert "\n== " not in log  # no step started
    assert files == ["log.txt"]


def test_gpu_checks_skips_every_step_once_the_budget_is_spent(tmp_path):
    # A budget under the 30 s a step needs at least: each step is listed, skipped, in the script's order.
    log, files = run_gpu_checks(tmp_path, BUDGET_S="20")
    assert list(summary(log)) == STEP_ORDER
    assert set(summary(log).values()) == {("skipped", "0")}
    assert files == ["log.txt"]  # nothing ran, so no archive of results either
    assert os.listdir(tmp_path / "gpu_checks_results") == []


def test_gpu_checks_packs_every_result_into_one_archive(tmp_path):
    """The device tool brings back at most 8 files: each step's output goes into results.tar.gz."""
    import tarfile

    log, files = run_gpu_checks(tmp_path, GPU_CHECKS_STEPS="9 8", BUDGET_S="35")  # step 8 gets 35 s or less
    assert list(summary(log)) == ["8_roadrunner"]
    assert files == ["log.txt", "results.tar.gz"]
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as archive:
        names = archive.getnames()
    assert "gpu_checks_results/8_roadrunner_rainbow.log" in names
    assert "gpu_checks_results/8_roadrunner_rainbow_psrl.log" in names
    assert not any("checkpoints" in name for name in names)
