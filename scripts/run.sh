#!/usr/bin/env bash
# Set up what is missing, then serve the default model and the site at http://127.0.0.1:8000/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
exec python3 -m pyapp serve "$@"
