#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of the project's kind (Debian, root, registries only).
#   scripts/setup.sh run   -> what `pyapp serve` needs
#   scripts/setup.sh test  -> everything the test suite needs (torch CPU, transformers, chromium, lavapipe)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$mode" = test ]; then
  # The CPU build from the local file; a bare `torch` requirement would pull CUDA.
  python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
  python3 -m pip install -q -e ".[test]"
else
  python3 -m pip install -q -e ".[server,gpu]"
fi

if [ ! -d node_modules/pyodide ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "[setup] npm install"
  npm install --no-audit --no-fund --loglevel=error
fi

# Models into the store (skips what is already there), then the site's vendored files.
python3 -m pyapp pull smollm2-135m
python3 -m pyapp pull minilm-l6
if [ "$mode" = test ]; then
  python3 -m pyapp pull gemma3-270m   # the Gemma 3 tests; prints the Gemma terms notice
fi
python3 -m server.assets
