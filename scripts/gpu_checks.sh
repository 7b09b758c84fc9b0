#!/usr/bin/env bash
# A GPU validation run that fits in ten minutes of one GPU (start-up not included): it stops itself
# after BUDGET_S seconds (default 540) and runs its steps in the order of what the project needs
# measured most. Every step is time-boxed (`timeout`) and writes its JSON or run records under RESULTS; a
# step that fails or runs out of time does not stop the ones after it. After each step RESULTS is
# packed into OUT/results.tar.gz, so OUT holds two files: that archive and log.txt (the machine,
# every step's output and, last, each step's exit status and seconds). Steps, run in the order
# 2, 7, 3, 8, 1, 4, 5, 6, 0:
#   2 benchmark.py rainbow_psrl, full width, S = 1 and 10 seeds vmapped: updates/s, MFU, memory,
#     compile time, and the update's time per named scope from a trace (psrl_jax/profile_scopes.py)
#   7 the same with psrl.refinement_levels=0 (the coarse flow head only)
#   3 benchmark.py rainbow, S = 1 and 10
#   8 rainbow and rainbow_psrl (full width) training on RoadRunner side by side, two processes on the
#     one GPU (45% of its memory each), 100k agent steps requested, evaluated every 5k, for the time
#     left in the box: their records (metrics with evaluations and rates, config, versions; no
#     checkpoints) give the comparison as far as both got and the rates that project a full run
#   1 update cost, one process, round-robin: rainbow, rainbow_psrl at full width, the width-1/16
#     copy, bf16 rainbow_psrl; FLOPs per update (XLA cost analysis) and ms per update side by side
#   4 update cost of sac, frame-wise sac and sac_psrl, time per scope
#   5 host loop vs fused envpool-XLA loop, rainbow_psrl at width 1/16
#   6 4 seeds per dispatch, vmapped (grouped convolutions) vs unrolled, rainbow and sac: which
#     config.seed_batching a GPU wants ("auto" vmaps there; on the CPU unroll won, docs/BENCHMARKS.md)
#   0 sac_psrl on cartpole_swingup to 100k env steps, seeds 0 and 1 vmapped in one process, MuJoCo
#     rendering on the GPU's EGL (dm_control backend, as the CPU runs in docs/runs)
#
# Here, once:   bash scripts/gpu_bundle.sh    (builds .whl/site.tar.xz, the missing packages, and
#                                              .gl/, the EGL loader's Debian packages)
# On the GPU node (the repository with .whl/ and .gl/ copied next to it; OUT is any folder):
#   bash scripts/gpu_checks.sh
# Anywhere, to check the script itself on the CPU at smoke sizes (BUDGET_S caps it at 9 minutes):
#   GPU_CHECKS_SMOKE=1 OUT=/tmp/gpu_checks bash scripts/gpu_checks.sh
# and the bundle as the GPU image will use it (Python 3.12, only the image's own packages):
#   bash scripts/gpu_bundle_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
BUDGET_S=${BUDGET_S:-540}
SMOKE=${GPU_CHECKS_SMOKE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# The device's setup, skipped by a smoke check of the script (which uses this machine's .venv and
# leaves its system libraries alone): the bundle's cp312 wheels (gpu_bundle.sh), and the libglvnd
# EGL loader that .gl/ carries, unpacked over / (the image has NVIDIA's EGL vendor library, no loader).
if [ "$SMOKE" != 1 ]; then
  if [ -f .whl/site.tar.xz ]; then
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz && export PYTHONPATH=/tmp/site:$PWD
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
  ATARI_STEPS=1200 # the smoke config's own length
  ATARI_EVAL_EVERY=600
else
  V=""
  SEEDS=1,10
  REPEATS=10
  DMC_STEPS=100000 # cartpole_swingup's 100k env steps: 12,500 agent steps at action repeat 8
  ATARI_STEPS=100000 # the Atari 100k protocol's agent steps
  ATARI_EVAL_EVERY=5000
fi
NARROW="psrl.correspondence_width=0.0625"

LOG="$OUT/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PYTHON" -c 'import jax, jaxlib, sys; print(sys.version); print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$LOG"

RESULTS=${TMPDIR:-/tmp}/gpu_checks_results
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
export PYTHON V RESULTS

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
  export STEP_LIMIT=$limit
  echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 25
  local rc=${PIPESTATUS[0]}
  SUMMARY+=$'\n'"$name $rc $((SECONDS - start))"
  # run records without their checkpoints; everything else as written
  tar -C "$(dirname "$RESULTS")" --exclude=checkpoints -czf "$OUT/results.tar.gz" "$(basename "$RESULTS")"
}

step 2_bench_rainbow_psrl 150 "$PYTHON" launch/benchmark.py --config "configs/rainbow_psrl.py$V" \
  --seeds_list "$SEEDS" --repeats "$REPEATS" --trace_dir /tmp/gpu_checks_trace --out "$RESULTS/2_bench_rainbow_psrl.json"
step 7_bench_rainbow_psrl_coarse 120 "$PYTHON" launch/benchmark.py --config "configs/rainbow_psrl.py$V" \
  --config.psrl.refinement_levels=0 --seeds_list "$SEEDS" --repeats "$REPEATS" \
  --out "$RESULTS/7_bench_rainbow_psrl_coarse.json"
step 3_bench_rainbow 60 "$PYTHON" launch/benchmark.py --config "configs/rainbow.py$V" \
  --seeds_list "$SEEDS" --repeats "$REPEATS" --out "$RESULTS/3_bench_rainbow.json"
# 8: both runs in the background of one bash, each time-boxed a little inside the step's box, so both
# write their last records before it closes.
ROADRUNNER='for name in rainbow rainbow_psrl; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 timeout $((STEP_LIMIT - 15)) "$PYTHON" launch/atari.py \
    --config "configs/$name.py$V" --config.env.game=RoadRunner --config.total_env_steps="$ATARI_STEPS" \
    --config.eval.every_steps="$ATARI_EVAL_EVERY" --config.checkpoint.every_steps=0 \
    --config.run_dir="$RESULTS/8_roadrunner_$name" > "$RESULTS/8_roadrunner_$name.log" 2>&1 &
done; wait; tail -n 3 "$RESULTS"/8_roadrunner_*.log'
export ATARI_STEPS ATARI_EVAL_EVERY
step 8_roadrunner 600 bash -c "$ROADRUNNER"
step 1_atari_update_cost 150 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$RESULTS/1_atari_update_cost.json" \
  "configs/rainbow.py$V" "configs/rainbow_psrl.py$V" "configs/rainbow_psrl.py$V@$NARROW" \
  "configs/rainbow_psrl.py$V@agent.compute_dtype=bfloat16"
step 4_dmc_update_cost 150 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$RESULTS/4_dmc_update_cost.json" \
  --scopes 2 "configs/sac.py$V" "configs/sac.py$V@agent.encoder=framewise" "configs/sac_psrl.py$V"
step 5_loops 60 "$PYTHON" launch/benchmark.py --config "configs/rainbow_psrl.py$V" --config.$NARROW \
  --loops --chunks 2 --out "$RESULTS/5_loops.json"
step 6_seed_batching 60 "$PYTHON" launch/compare_updates.py --repeats "$REPEATS" --out "$RESULTS/6_seed_batching.json" \
  --seed_axis=none,vmap,unroll --num_seeds=4 "configs/rainbow.py$V" "configs/sac.py$V"
# 0: seeds 0 and 1 as agents 0 and 1 of one vmapped run (agent i uses seed + i), as the one-seed CPU
# runs in docs/runs were seeded; one checkpoint, at the end.
step 0_dmc_run 420 "$PYTHON" launch/dmc.py --config "configs/sac_psrl.py$V" --config.env.task=cartpole_swingup \
  --config.seed=0 --config.num_seeds=2 --config.total_env_steps="$DMC_STEPS" --config.env.backend=dm_control \
  --config.checkpoint.every_steps=0 --config.run_dir="$RESULTS/0_dmc_run"

echo "$SUMMARY" | tee -a "$LOG"
