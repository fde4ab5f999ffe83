#!/bin/bash
# H200 run 13: the wide-load GEMV (linear_sgw) and the decode attention kernel (attention_dec)
# against the kernels they replace, kernel alone and in the decode (issue 16).
# Carry .perf (gl/ loader debs, whl/ wgpu 0.32 wheels for Python 3.12, deno.xz, pyodide/).
cd "$(dirname "$0")/../.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl 2>/dev/null || exit 1
[ -x /tmp/deno ] || { xz -dc .perf/deno.xz > /tmp/deno && chmod +x /tmp/deno; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# everything lands in /tmp/r13 and comes back as one archive ($OUT takes at most 8 files)
R=/tmp/r13; mkdir -p $R; trap 'tar czf $OUT/run13$1.tgz -C /tmp r13' EXIT
B="python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide .perf/pyodide --out $R"
if [ "$1" = table ]; then
  # run 13e (and 13h after DECODE_DEPTH = 4): the final table, default (autotuned) plans
  timeout 420 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --deno-depth 8 --label final 2>&1 | tee $R/final-log.txt
  exit
fi
if [ "$1" = readback ]; then
  # run 13d: how a readback waits (map_sync / index / index_spin), step by step and pipelined
  timeout 240 python3 benchmarks/bench_readback.py --out $R 2>&1 | tee $R/readback-log.txt
  exit
fi
if [ "$1" = depth ]; then
  # run 13f: native pipeline depth 2 / 3 / 4 (the read wait: index), 3 rounds interleaved
  timeout 300 python3 benchmarks/bench_readback.py --modes index --depths ${DEPTHS:-2,3,4} --rounds 3 \
    --shapes llama-7b-f16,smollm2-135m-f16,llama-1b-f16 --out $R 2>&1 | tee $R/depth-log.txt
  exit
fi
if [ "$1" = wgw ]; then
  # run 13k: the 7B shape with wgw2 forced: the native profile and the Deno row on the same plan
  timeout 240 $B --shapes llama-7b-f16 --no-torch --profile --deno-depth 8 --variants '{"linear": "wgw2"}' \
    --label wgw2 2>&1 | tee $R/wgw-log.txt
  exit
fi
if [ "$1" = denodepth ]; then
  # run 13l: the browser binding (Deno) at the 7B shape, 8 vs 16 steps in flight, back to back
  for d in 8 16 8 16; do
    timeout 110 $B --shapes llama-7b-f16 --no-torch --deno-depth $d --label deno-depth$d 2>&1 | tail -3 | tee -a $R/denodepth-log.txt
  done
  exit
fi
if [ "$1" = tune ]; then
  # run 13m: the autotune with 32 replays / best of 5 at the 7B shape (which variant, how long)
  timeout 150 $B --shapes llama-7b-f16 --no-deno --no-torch --label tune 2>&1 | tail -4 | tee $R/tune-log.txt
  exit
fi
if [ "$1" = encode ]; then
  # run 13n: host encoding of a token, wgpu-py's pass methods vs wgpu-native's calls; then the
  # SmolLM2 / 7B decode on the default path
  timeout 100 python3 benchmarks/bench_encode.py --out $R 2>&1 | tee $R/encode-log.txt
  timeout 80 $B --shapes smollm2-135m-f16,llama-7b-f16 --no-deno --no-torch --label encode 2>&1 | tail -4 | tee -a $R/encode-log.txt
  exit
fi
if [ "$1" = check ]; then
  # run 13c: default (autotuned) plans after the readback wait fix and attention_dec by default
  timeout 300 $B --shapes smollm2-135m-f16,llama-7b-f16,llama-7b-q4_1,llama-1b-f16 --no-deno --no-torch --profile \
    --label check 2>&1 | tee $R/check-log.txt
  exit
fi
# run 13a
# 1. every GEMV shape of the 7B / 1B / SmolLM2, old variants and the sgw shapes, both storage kinds
timeout 150 $B --shapes llama-7b-f16,llama-1b-f16,smollm2-135m-f16 --gemv --no-decode --no-torch --no-deno \
  --gemv-variants wg,sg4,sgw1,sgw2,sgw4,sgw2u2,sgw4u2,sgw1u4 --label gemv 2>&1 | tee $R/gemv-log.txt
# 2. the two decode attention kernels alone
timeout 60 python3 benchmarks/bench_attention.py --out $R 2>&1 | tee $R/attention-log.txt
# 3. decode A/B, profiled: before (wg, attention_split), sgw GEMVs, sgw + attention_dec
for v in '{"linear": "wg"}' '{"linear": "sgw2"}' '{"linear": "sgw2u2"}' '{"linear": "sgw2", "attn_dec": true}'; do
  timeout 75 $B --shapes smollm2-135m-f16,llama-7b-f16 --no-deno --no-torch --profile --variants "$v" \
    --label "$v" 2>&1 | tee -a $R/decode-ab-log.txt
done
