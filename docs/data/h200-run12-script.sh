#!/bin/bash
# (benchmarks/bench_attention.py and attention_dims were removed after this run: merge 6cf29eb has them)
# H200 run 12: after attention_dims (split attention, fixed-trip loops), Gemma's window attention /
# q-k norm / two-level argmax kernels, and pipelined decode in the product paths (issue 16, 18).
# Carry .perf (gl/ loader debs, whl/ wgpu 0.32 wheels for Python 3.12, deno.xz, pyodide/).
cd "$(dirname "$0")/../.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl 2>/dev/null || exit 1
[ -x /tmp/deno ] || { xz -dc .perf/deno.xz > /tmp/deno && chmod +x /tmp/deno; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
B="python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide .perf/pyodide --out $OUT"
if [ "$1" = table ]; then
  # run 12b: the final table after attention_split was made the default again (no profile)
  timeout 400 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --label final-b 2>&1 | tee $OUT/final-b-log.txt
  exit
fi
if [ "$1" = depth ]; then
  # run 12c: the browser binding (Deno) with 4 vs 8 pipelined steps in flight
  for d in 4 8; do
    timeout 120 $B --shapes smollm2-135m-f16,gemma3-270m-f16 --no-torch --deno-depth $d --label deno-depth$d \
      2>&1 | tee $OUT/deno-depth$d-log.txt
  done
  exit
fi
# 1. the two split-attention kernels alone, interleaved
timeout 60 python3 benchmarks/bench_attention.py --out $OUT 2>&1 | tee $OUT/attention-log.txt
# 2. whole decode with the old kernel (A/B against 3's rows), profiled
timeout 100 $B --shapes smollm2-135m-f16,llama-7b-f16 --no-deno --no-torch --profile --label attn-split \
  --variants '{"attn_kernel": "split"}' 2>&1 | tee $OUT/attn-split-log.txt
# 3. the final table, default plans, profiled
timeout 400 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
  --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --profile --label final 2>&1 | tee $OUT/final-log.txt
