#!/usr/bin/env bash
# The device check for a lent GPU, prepared to fit one `run` call: a lent task has 15 minutes of
# device time in all (start-up included) and one command may run 10, so this script stops itself
# after BUDGET_S seconds (default 540) and runs its steps in the order of what the open issues need
# most. Every step is time-boxed (`timeout`) and writes its JSON (step 0: an archive) under OUT; a
# step that fails or runs out of time does not stop the ones after it. OUT/log.txt holds the
# machine, every step's output and, last, each step's exit status and seconds: 8 files in all, the
# device tool's limit. Steps, run in the order 0, 4, 1, 2, 3, 5, 6 (issue 4 is the only open one;
# then the figures that issues 5 and 3 ended without):
#   0 issue 4's last deliverable, the run itself: sac_psrl on cartpole_swingup to 100k env steps,
#     seeds 0 and 1 vmapped in one process, MuJoCo rendering on the GPU's EGL (dm_control backend,
#     as the CPU runs in docs/runs). Its records (metrics with evaluations and rates, config and
#     versions; no checkpoints) come back as 0_dmc_run.tar.gz, finished or not; the log shows its
#     progress bar (rate, ETA)
#   1 update cost, one process, round-robin: rainbow, rainbow_psrl at full width, the width-1/16
#     copy, bf16 rainbow_psrl; FLOPs per update (XLA cost analysis) and ms per update side by side
#   2 benchmark.py rainbow_psrl, full width, S = 1 and 10 seeds vmapped: updates/s, MFU, memory,
#     and the update's time per named scope from a trace (psrl_jax/profile_scopes.py)
#   3 benchmark.py rainbow, S = 1 and 10
#   4 update cost of sac, frame-wise sac and sac_psrl (the issue-4 ratio on a GPU), time per scope
#   5 host loop vs fused envpool-XLA loop, rainbow_psrl at width 1/16
#   6 4 seeds per dispatch, vmapped (grouped convolutions) vs unrolled, rainbow and sac: which
#     config.seed_batching a GPU wants ("auto" vmaps there; on the CPU unroll won, docs/BENCHMARKS.md)
#
# Here, once:   bash scripts/gpu_bundle.sh    (builds .whl/site.tar.xz, the missing packages, and
#                                              .gl/, the EGL loader's Debian packages)
# On the device (device tool, carry [".whl", ".gl"]):
#   bash scripts/gpu_checks.sh
# Anywhere, to check the script itself on the CPU at smoke sizes (BUDGET_S caps it at 9 minutes):
#   GPU_CHECKS_SMOKE=1 OUT=/tmp/gpu_checks bash scripts/gpu_checks.sh
# and the bundle as the GPU image will use it (Python 3.12, only the image's own packages):
#   bash scripts/gpu_bundle_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results (the device tool sets it)}
BUDGET_S=${BUDGET_S:-540}
SMOKE=${GPU_CHECKS_SMOKE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# The device's setup, skipped by a smoke check of the script (which uses this machine's .venv and
# leaves its system libraries alone): the bundle's cp312 wheels (gpu_bundle.sh), and the libglvnd
# EGL loader that .gl/ carries, unpacked over / (the image has NVIDIA's EGL vendor library, no loader).
if [ "$SMOKE" != 1 ]; then
  if [ -f .whl/site.tar.xz ]; then
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz && export PYTHONPATH=/tmp/site
  fi
  if compgen -G ".gl/*.deb" >/dev/null; then
    for deb in .gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
  fi
fi
NVIDIA_EGL_VENDOR=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$NVIDIA_EGL_VENDOR" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_EGL_VENDOR
fi
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

# full size on the GPU; the same code paths at smoke sizes when checking the script on a CPU
if [ "$SMOKE" = 1 ]; then
  V=":smoke"
  SEEDS=1,2
  REPEATS=2
  DMC_STEPS=2400 # the smoke config's own length
else
  V=""
  SEEDS=1,10
  REPEATS=10
  DMC_STEPS=100000 # cartpole_swingup's 100k env steps: 12,500 agent steps at action repeat 8
fi
NARROW="psrl.correspondence_width=0.0625"

LOG="$OUT/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PYTHON" -c 'import jax, jaxlib, sys; print(sys.version); print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$LOG"

SUMMARY="step exit seconds"
ONLY=${GPU_CHECKS_STEPS:-} # e.g. "0 4": only those steps (scripts/gpu_bundle_check.sh); empty: all
step() { # step NAME SECONDS command...: run it time-boxed unless the budget is spent; output to LOG
  local name=$1 limit=$2 left=$((BUDGET_S - SECONDS))
  shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" ${name%%_*} "* ]]; then
    return
  fi
  if [ "$left" -lt 30 ]; then
    SUMMARY+=$'\n'"$name skipped 0"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 25
  local rc=${PIPESTATUS[0]}
  SUMMARY+=$'\n'"$name $rc $((SECONDS - start))"
}

# 0: seeds 0 and 1 as agents 0 and 1 of one vmapped run (agent i uses seed + i), as the one-seed CPU
# runs in docs/runs were seeded; one checkpoint, at the end. The archive is written even when the
# time box stops the run: its metrics hold every record up to there.
DMC_RUN=${TMPDIR:-/tmp}/gpu_checks_dmc_run
rm -rf "$DMC_RUN"
step 0_dmc_run 420 "$PYTHON" launch/dmc.py --config "configs/sac_psrl.py$V" --config.env.task=cartpole_swingup \
  --config.seed=0 --config.num_seeds=2 --config.total_env_steps="$DMC_STEPS" --config.env.backend=dm_control \
  --config.checkpoint.every_steps=0 --config.run_dir="$DMC_RUN"
[ -d "$DMC_RUN" ] && tar -C "$(dirname "$DMC_RUN")" --exclude=checkpoints -czf "$OUT/0_dmc_run.tar.gz" "$(basename "$DMC_RUN")"
step 4_dmc_update_cost 150 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$OUT/4_dmc_update_cost.json" \
  --scopes 2 "configs/sac.py$V" "configs/sac.py$V@agent.encoder=framewise" "configs/sac_psrl.py$V"
step 1_atari_update_cost 150 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$OUT/1_atari_update_cost.json" \
  "configs/rainbow.py$V" "configs/rainbow_psrl.py$V" "configs/rainbow_psrl.py$V@$NARROW" \
  "configs/rainbow_psrl.py$V@agent.compute_dtype=bfloat16"
step 2_bench_rainbow_psrl 150 "$PYTHON" launch/benchmark.py --config "configs/rainbow_psrl.py$V" \
  --seeds_list "$SEEDS" --repeats "$REPEATS" --trace_dir /tmp/gpu_checks_trace --out "$OUT/2_bench_rainbow_psrl.json"
step 3_bench_rainbow 60 "$PYTHON" launch/benchmark.py --config "configs/rainbow.py$V" \
  --seeds_list "$SEEDS" --repeats "$REPEATS" --out "$OUT/3_bench_rainbow.json"
step 5_loops 60 "$PYTHON" launch/benchmark.py --config "configs/rainbow_psrl.py$V" --config.$NARROW \
  --loops --chunks 2 --out "$OUT/5_loops.json"
step 6_seed_batching 60 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$OUT/6_seed_batching.json" \
  --seed_axis=none,vmap,unroll --num_seeds=4 "configs/rainbow.py$V" "configs/sac.py$V"

echo "$SUMMARY" | tee -a "$LOG"
