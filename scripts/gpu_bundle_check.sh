#!/usr/bin/env bash
# Checks .whl/site.tar.xz (scripts/gpu_bundle.sh) the way a GPU node will use it, here on the CPU,
# before GPU time is spent on it: a Python 3.12 venv holding only packages that the GPU image has
# (jax, flax, optax, chex, orbax, numpy, scipy, absl-py, six, tqdm, ...; the bundle brings the rest), the bundle on PYTHONPATH, and
# scripts/gpu_checks.sh at smoke sizes for its steps 0 (the DMC training run) and 4 (the DMC update
# cost), which import every part of the project a DMC run needs. Fails unless both steps pass.
# This check is how the bundle was found to need tfp-nightly's `decorator` and `gast`, without which
# every step fails at import on the GPU node.
#   bash scripts/gpu_bundle_check.sh     (3.5 minutes on a 2-core CPU with the venv's install; the venv is kept in VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
find_python312() { # the first candidate that runs and is 3.12 (a pyenv shim may exist and not run)
  local candidate
  for candidate in ${PY312:-} python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}
PY312=$(find_python312)
if [ -z "$PY312" ]; then
  echo "gpu_bundle_check: needs python3.12, the GPU image's Python (set PY312=/path/to/python3.12)" >&2
  exit 2
fi
if [ ! -f .whl/site.tar.xz ]; then
  echo "gpu_bundle_check: no .whl/site.tar.xz; run scripts/gpu_bundle.sh first" >&2
  exit 2
fi
VENV=${VENV:-/tmp/gpu_image_venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  # The image's own packages that this project uses (their dependencies are on the image too), at the
  # versions KINDS.md read off it where it gives them: jax and jaxlib 0.11.2 (CPU wheels here), numpy 2.5.2.
  "$VENV/bin/python" -m pip install -q ${IMAGE_PINS:-jax==0.11.2 jaxlib==0.11.2 numpy==2.5.2} \
    flax optax chex orbax-checkpoint scipy absl-py six tqdm matplotlib pandas pyyaml
fi
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
tar -C "$SITE" -xJf .whl/site.tar.xz
OUT=${OUT:-/tmp/gpu_bundle_check}
rm -rf "$OUT"
PYTHON="$VENV/bin/python" PYTHONPATH="$SITE:$PWD" GPU_CHECKS_SMOKE=1 GPU_CHECKS_STEPS="0 4" \
  BUDGET_S=${BUDGET_S:-400} OUT="$OUT" bash scripts/gpu_checks.sh >/dev/null
grep -A20 '^step exit seconds' "$OUT/log.txt"
for name in 0_dmc_run 4_dmc_update_cost; do
  if ! grep -q "^$name 0 " "$OUT/log.txt"; then
    echo "gpu_bundle_check: step $name failed with the bundle; its output is in $OUT/log.txt" >&2
    exit 1
  fi
done
echo "gpu_bundle_check: the bundle runs steps 0 and 4 under $("$VENV/bin/python" -V)"
