#!/bin/bash
# H200 run 9: f16 vs q4_1 at SmolLM2's and Llama 7B's shapes, one run (issue 13)
cd "$(dirname "$0")/.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 500 python3 benchmarks/bench_compare.py --shapes smollm2-135m-f16,smollm2-135m-q4_1,llama-7b-f16,llama-7b-q4_1 --no-deno --gemv --label q4_1-vs-f16 --out $OUT 2>&1 | tee $OUT/compare-log.txt
