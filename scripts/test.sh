#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), then lint, format check and the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# --maxschedchunk=1: xdist hands out tests one or two at a time, in collection order (tests/conftest.py
# puts the slow ones first); by default each worker starts with a quarter of the suite in one block.
.venv/bin/python -m pytest -q -n 2 --maxschedchunk=1 --durations=10 "$@"
