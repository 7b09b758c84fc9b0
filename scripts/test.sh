#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), then lint, format check and the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=10 "$@"
