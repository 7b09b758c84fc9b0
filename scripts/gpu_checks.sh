#!/usr/bin/env bash
# The device check for a lent GPU, prepared to fit one `run` call: a lent task has 15 minutes of
# device time in all (start-up included) and one command may run 10, so this script stops itself
# after BUDGET_S seconds (default 480) and runs its steps in the order of what the open issues need
# most. Every step is time-boxed (`timeout`) and writes its JSON under OUT; a step that fails or
# runs out of time does not stop the ones after it. OUT/log.txt holds the machine, every step's
# output and, last, each step's exit status and seconds: 7 files in all, within the device tool's
# 8 files back. Steps, run in the order 4, 1, 2, 3, 5, 6 (issue 4 is the only open one; then the
# figures that issues 5 and 3 ended without):
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
# Here, once:   bash scripts/gpu_bundle.sh          (builds .whl/site.tar.xz, the missing packages)
# On the device (device tool, carry [".whl"]):
#   bash scripts/gpu_checks.sh
# Anywhere, to check the script itself on the CPU at smoke sizes in about 4 minutes:
#   GPU_CHECKS_SMOKE=1 OUT=/tmp/gpu_checks bash scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results (the device tool sets it)}
BUDGET_S=${BUDGET_S:-480}
SMOKE=${GPU_CHECKS_SMOKE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -f .whl/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz && export PYTHONPATH=/tmp/site
fi
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

# full size on the GPU; the same code paths at smoke sizes when checking the script on a CPU
if [ "$SMOKE" = 1 ]; then
  V=":smoke"
  SEEDS=1,2
  REPEATS=2
else
  V=""
  SEEDS=1,10
  REPEATS=10
fi
NARROW="psrl.correspondence_width=0.0625"

LOG="$OUT/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PYTHON" -c 'import jax, jaxlib, sys; print(sys.version); print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$LOG"

SUMMARY="step exit seconds"
step() { # step NAME SECONDS command...: run it time-boxed unless the budget is spent; output to LOG
  local name=$1 limit=$2 left=$((BUDGET_S - SECONDS))
  shift 2
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
