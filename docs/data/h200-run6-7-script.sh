#!/bin/bash
# One H200 run of benchmarks/bench_compare.py (issue 16), carried as .perf/ (ignored).
cd "$(dirname "$0")"
for f in gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
xz -dc deno.xz > /tmp/deno && chmod +x /tmp/deno
export PYTHONUNBUFFERED=1
cd src
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MODE=${1:-all}
if [ "$MODE" = all ] || [ "$MODE" = main ]; then
  timeout 420 python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide ../pyodide --profile --gemv \
     --label after --out $OUT 2>&1 | tee $OUT/compare-log.txt
fi
if [ "$MODE" = all ] || [ "$MODE" = ab ]; then
  for cfg in 'split32:{"attn_split": 32}' 'split64:{"attn_split": 64}'; do
    name=${cfg%%:*}; js=${cfg#*:}
    timeout 150 python3 benchmarks/bench_compare.py --no-deno --no-torch --shapes smollm2-135m-f16,llama-7b-f16 \
      --profile --label $name --variants "$js" --out $OUT/$name 2>&1 | tee $OUT/ab-$name-log.txt
  done
fi
