#!/bin/bash
cd "$(dirname "$0")"
for f in gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
xz -dc deno.xz > /tmp/deno && chmod +x /tmp/deno
export PYTHONUNBUFFERED=1
cd src
timeout 480 python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide ../pyodide --label deno-split32 --out $OUT 2>&1 | tee $OUT/compare-log.txt
