#!/usr/bin/env bash
# Set up everything the tests need (idempotent), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
scripts/setup.sh test
mkdir -p artifacts bench-results
python3 -m pytest -ra "$@"
