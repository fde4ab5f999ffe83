#!/bin/bash
# H200 run 10b: the sgb Q4_1 GEMV written out (named registers, U units per trip), issue 13.
# Run from the main checkout with the branch's pyapp/ + benchmarks/ copied to .perf/q4/ and
# .perf/gl (loader debs), .perf/whl (wgpu 0.32 wheels) carried.
cd "$(dirname "$0")/../.." 2>/dev/null; [ -d .perf/q4 ] || cd /work/main
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.perf/q4 PYTHONUNBUFFERED=1
B=.perf/q4/benchmarks/bench_compare.py
# 1. GEMVs alone, every variant, u32 and f16 storage (before = wg/sg/sg4 u32: run 9's kernels)
timeout 200 python3 $B --shapes llama-7b-q4_1,smollm2-135m-q4_1 --no-deno --no-decode --gemv \
  --label gemv --out $OUT 2>&1 | tee $OUT/gemv-log.txt
# 2. decode, autotuned (sgb and the storage kind among the candidates)
timeout 200 python3 $B --shapes llama-7b-q4_1,smollm2-135m-q4_1 --no-deno --label decode --out $OUT 2>&1 | tee $OUT/decode-log.txt
