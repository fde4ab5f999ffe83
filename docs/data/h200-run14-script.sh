#!/bin/bash
# H200 run 14 (issue 16, second pass): the browser binding's depth at the 7B shape, the Q4_1
# GEMV with an 8-bit input (linear_sgq) against linear_sgb, chunked submits for step-by-step
# tokens, and the final table. Carry .perf (gl/ loader debs, whl/ wgpu 0.32 wheels for Python
# 3.12, deno.xz, pyodide/).
cd "$(dirname "$0")/../.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl 2>/dev/null || exit 1
[ -x /tmp/deno ] || { xz -dc .perf/deno.xz > /tmp/deno && chmod +x /tmp/deno; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# everything lands in /tmp/r14 and comes back as one archive
R=/tmp/r14; mkdir -p $R; trap 'tar czf $OUT/run14$1.tgz -C /tmp r14' EXIT
B="python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide .perf/pyodide --out $R"
if [ "$1" = deno ]; then
  # 14a: Deno at the 7B shape on the wgw2 plan (native: the same plan), 8 / 16 / 32 steps in
  # flight, with the native profile once: does the Deno row gain with depth (the GPU's queue
  # runs dry) or not (per-token cost)?
  timeout 120 $B --shapes llama-7b-f16 --no-torch --profile --deno-depth 8 --variants '{"linear": "wgw2"}' \
    --label deno-wgw2-d8 2>&1 | tail -12 | tee -a $R/deno-log.txt
  for d in 16 32 8; do
    timeout 100 $B --shapes llama-7b-f16 --no-torch --deno-depth $d --variants '{"linear": "wgw2"}' \
      --label deno-wgw2-d$d 2>&1 | tail -3 | tee -a $R/deno-log.txt
  done
  exit
fi
if [ "$1" = sgq ]; then
  # 14b: the Q4_1 GEMV with the input quantized to 8 bits in the kernel (linear_sgq) against
  # linear_sgb, alone at the 7B shapes (both storage kinds), then in the 7B Q4_1 decode
  timeout 150 $B --shapes llama-7b-q4_1 --gemv --no-decode --no-deno --no-torch \
    --gemv-variants sgb2,sgb4,sgq1,sgq2,sgq4,sgq2u2,sgq4u2 --label sgq-gemv 2>&1 | tee $R/sgq-gemv-log.txt
  timeout 90 $B --shapes llama-7b-q4_1 --gemv --no-decode --no-deno --no-torch \
    --gemv-variants sgq2,sgq4,sgq4u2 --variants '{"sgq_groups": 264}' --label sgq-gemv-g264 2>&1 | tee -a $R/sgq-gemv-log.txt
  for v in sgb2 sgq2; do
    timeout 80 $B --shapes llama-7b-q4_1 --linear $v --no-deno --no-torch --profile --label $v-decode \
      2>&1 | tail -14 | tee -a $R/sgq-decode-log.txt
  done
  timeout 100 $B --shapes llama-7b-q4_1,smollm2-135m-q4_1 --no-deno --no-torch --label q4_1-autotuned 2>&1 | tail -5 | tee -a $R/sgq-decode-log.txt
  exit
fi
if [ "$1" = chunks ]; then
  # 14c: a step-by-step token's pass in several submits (first 16 dispatches, then 64 each, and
  # other rules) against one submit: wall, the same step pre-encoded, and the exposed encoding
  timeout 420 python3 benchmarks/bench_chunks.py --out $R 2>&1 | tee $R/chunks-log.txt
  exit
fi
if [ "$1" = table ]; then
  # 14e: the final table, default (autotuned) plans; the Deno rows on the page's rule (steps in
  # flight by time, up to 32); the native step column with the default submit chunks
  timeout 480 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --label final 2>&1 | tee $R/final-log.txt
  exit
fi
if [ "$1" = deno2 ]; then
  # 14f: Deno at the 7B shape on the page's rule against native (autotuned), three times
  for i in 1 2 3; do
    timeout 110 $B --shapes llama-7b-f16 --no-torch --label deno-inflight-$i 2>&1 | tail -3 | tee -a $R/deno2-log.txt
  done
  exit
fi
if [ "$1" = sgqw ]; then
  # 14d: the int8-input Q4_1 GEMV over runs of four blocks read as 16-byte loads (sgqw) against
  # sgb and sgq, alone at the 7B shapes, then in the 7B q4_1 decode, then autotuned
  timeout 120 $B --shapes llama-7b-q4_1 --gemv --no-decode --no-deno --no-torch \
    --gemv-variants sgb2,sgq4u2,sgqw1,sgqw2,sgqw4,sgqw8,sgqw2u2 --label sgqw-gemv 2>&1 | tee $R/sgqw-gemv-log.txt
  timeout 100 $B --shapes llama-7b-q4_1 --gemv --no-decode --no-deno --no-torch \
    --gemv-variants sgq4u2,sgqw2,sgqw4,sgqw8 --variants '{"sgq_groups": 264}' --label sgqw-gemv-g264 2>&1 | tee -a $R/sgqw-gemv-log.txt
  for v in sgb2 sgqw2 sgqw4; do
    timeout 80 $B --shapes llama-7b-q4_1 --linear $v --no-deno --no-torch --profile --label $v-decode \
      2>&1 | tail -14 | tee -a $R/sgqw-decode-log.txt
  done
  timeout 100 $B --shapes llama-7b-q4_1,smollm2-135m-q4_1 --no-deno --no-torch --label q4_1-autotuned 2>&1 | tail -5 | tee -a $R/sgqw-decode-log.txt
  exit
fi
if [ "$1" = groups ]; then
  # 14g: sgqw4 in the 7B q4_1 decode with fewer workgroups (each quantizes its input once for
  # several column rounds): default (one per 16 columns), 132, 264, 528; then step-by-step chunk
  # rules with smaller chunks for the small models
  for g in 0 132 264 528; do
    v='{"linear": "sgqw4"}'; [ $g != 0 ] && v="{\"linear\": \"sgqw4\", \"sgq_groups\": $g}"
    timeout 80 $B --shapes llama-7b-q4_1 --no-deno --no-torch --profile --variants "$v" --label sgqw4-g$g \
      2>&1 | grep -E "native|linear_sgq|whole" | tee -a $R/groups-log.txt
  done
  timeout 200 python3 benchmarks/bench_chunks.py --shapes smollm2-135m-f16,gemma3-270m-f16 --rules none,16:16,8:8,8:16,4:8 \
    --out $R 2>&1 | tee $R/chunks2-log.txt
  exit
fi
if [ "$1" = pyhost ]; then
  # 14h: the browser binding after its per-step host cost was cut (reads without a Python task,
  # the readback mapped from its submit, writes staged in one assign): Deno vs native, and the
  # Python host time per pipelined step in both bindings (GPU calls stubbed / empty passes)
  timeout 300 $B --shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --no-torch --label pyhost 2>&1 | tail -6 | tee $R/pyhost-log.txt
  timeout 150 python3 benchmarks/host_step.py --deno /tmp/deno --pyodide .perf/pyodide --new-tokens 400 \
    --pending --empty --out $R/host-step.json 2>&1 | tee -a $R/pyhost-log.txt
  exit
fi
if [ "$1" = pyhost2 ]; then
  # 14i: the same with one event-loop turn per read kept (14h: without it Deno ran slower)
  timeout 300 $B --shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --no-torch --label pyhost2 2>&1 | tail -6 | tee $R/pyhost2-log.txt
  exit
fi
if [ "$1" = qfold ]; then
  # 14k: the split merge folded into the Q4_1 o-projection (sgb / sgq / sgqw): on, then off
  for v in '{}' '{"off": ["fold_merge"]}'; do
    timeout 120 $B --shapes smollm2-135m-q4_1,llama-7b-q4_1 --no-deno --no-torch --variants "$v" --label "qfold $v" \
      2>&1 | tail -4 | tee -a $R/qfold-log.txt
  done
  exit
fi
