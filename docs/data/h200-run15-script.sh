#!/bin/bash
# H200 run 15 (issue 16, third pass): the dispatch floor (a token's dispatches with no work in
# them) beside each decode row, and the autotune's workgroup count for the int8-input Q4_1 GEMVs.
# Carry .perf (gl/ loader debs, whl/ wgpu 0.32 wheels for Python 3.12, deno.xz, pyodide/).
cd "$(dirname "$0")/../.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl 2>/dev/null || exit 1
[ -x /tmp/deno ] || { xz -dc .perf/deno.xz > /tmp/deno && chmod +x /tmp/deno; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# everything lands in /tmp/r15 and comes back as one archive
R=/tmp/r15; mkdir -p $R; trap 'tar czf $OUT/run15$1.tgz -C /tmp r15' EXIT
B="python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide .perf/pyodide --out $R"
if [ "$1" = q4 ]; then
  # 15a: the Q4_1 rows autotuned (now with the workgroup count measured, `sgq_groups`), each with
  # its dispatch floor (the same grids with no work) and the per-class profile: how far from the
  # ceiling that WebGPU's dispatches leave
  timeout 300 $B --shapes llama-7b-q4_1,smollm2-135m-q4_1,gemma3-270m-q4_1 --no-deno --profile --label q4-floor \
    2>&1 | tee $R/q4-log.txt
  exit
fi
if [ "$1" = shapes ]; then
  # 15c: the 7B q4_1 GEMVs by weight shape (qkv, o, gate/up, down, head) against their floor,
  # over workgroup counts and column counts: fixed cost or bandwidth?
  for v in '{"linear": "sgqw4"}' '{"linear": "sgqw4", "sgq_groups": 384}' '{"linear": "sgqw8", "sgq_groups": 384}' \
           '{"linear": "sgqw2u2", "sgq_groups": 384}' '{"linear": "sgb2"}' '{"linear": "sgqw4", "sgq_groups": 1024}'; do
    timeout 80 $B --shapes llama-7b-q4_1 --no-deno --no-torch --profile --variants "$v" --label "shapes $v" \
      2>&1 | grep -E "native|#|whole" | tee -a $R/shapes-log.txt
  done
  exit
fi
if [ "$1" = layout ]; then
  # 15d: Q4_1 bytes streamed in sgqw's pattern vs fully coalesced (bench_q4_layout), then the
  # 7B f16 GEMVs by shape for the streaming rate f16 reaches in the decode
  timeout 120 python3 benchmarks/bench_q4_layout.py --out $R 2>&1 | tee $R/layout-log.txt
  timeout 150 $B --shapes llama-7b-f16 --no-deno --no-torch --profile --label f16-shapes \
    2>&1 | grep -E "native|#|whole" | tee -a $R/layout-log.txt
  exit
fi
if [ "$1" = ablate ]; then
  # 15e: the sgqw GEMV with parts of its source taken out (bench_q4_ablate), 7B shapes
  for v in sgqw4 sgqw2; do
    timeout 150 python3 benchmarks/bench_q4_ablate.py --variant $v --out $R 2>&1 | tee -a $R/ablate-log.txt
  done
  exit
fi
if [ "$1" = xq ]; then
  # 15f: the int8 input of the wide Q4_1 GEMV in workgroup memory as planes (lanes reading
  # consecutive vec4) against block order (.perf/old: the tree before, `git archive`): kernel alone
  # (bench_q4_ablate, as built) and in the 7B q4_1 decode, old then new, twice
  for i in 1 2; do
    for t in .perf/old .; do
      (cd $t && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 benchmarks/bench_q4_ablate.py --variant sgqw4 --out $R) \
        2>&1 | grep -E "MB|as built|stream" | sed "s|^|$t |" | tee -a $R/xq-log.txt
      (cd $t && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 benchmarks/bench_compare.py --shapes llama-7b-q4_1,smollm2-135m-q4_1 \
        --no-deno --no-torch --variants '{"linear": "sgqw4", "sgq_groups": 384}' --label "xq $t" --out $R) \
        2>&1 | grep -E "native" | sed "s|^|$t |" | tee -a $R/xq-log.txt
    done
  done
  exit
fi
if [ "$1" = prefetch ]; then
  # 15g: the wide Q4_1 GEMV with its first trip's weights loaded before the input is quantized
  # (`sgq_prefetch`, a plan key that existed for this run and 15h only: measured slower in the
  # decode and removed) against without: kernel alone, then the 7B q4_1 decode (default grid and 384
  # workgroups), alternating, twice
  for pf in false true; do
    timeout 60 python3 benchmarks/bench_q4_ablate.py --variant sgqw4 --variants "{\"sgq_prefetch\": $pf}" --out $R \
      2>&1 | grep -E "MB|as built|no-quantize  |stream" | sed "s|^|prefetch $pf |" | tee -a $R/prefetch-log.txt
  done
  for i in 1 2; do
    for v in '"sgq_prefetch": false' '"sgq_prefetch": true' '"sgq_prefetch": false, "sgq_groups": 384' '"sgq_prefetch": true, "sgq_groups": 384'; do
      timeout 60 $B --shapes llama-7b-q4_1 --no-deno --no-torch --variants "{\"linear\": \"sgqw4\", $v}" --label "prefetch $v" \
        2>&1 | grep -E "native" | sed "s|^|$v |" | tee -a $R/prefetch-log.txt
    done
  done
  exit
fi
if [ "$1" = prefetch2 ]; then
  # 15h: as 15g with the gate/up pair not prefetched (15g: the decode fell 375 -> 240 tok/s with
  # it), by weight shape (--profile)
  for v in '"sgq_prefetch": false, "sgq_groups": 384' '"sgq_prefetch": true, "sgq_groups": 384' '"sgq_prefetch": true'; do
    timeout 70 $B --shapes llama-7b-q4_1 --no-deno --no-torch --profile --variants "{\"linear\": \"sgqw4\", $v}" --label "prefetch2 $v" \
      2>&1 | grep -E "native|#[0-9] gx" | grep -v floor | sed "s|^|$v |" | tee -a $R/prefetch2-log.txt
  done
  exit
fi
if [ "$1" = ahead ]; then
  # 15j: a step-by-step token with the next step encoded ahead (right after the submit, while the
  # GPU runs it; GpuBackend.encode_ahead) against one submit and the chunked default
  timeout 400 python3 benchmarks/bench_chunks.py --rules none,16:16,16:16+ahead,none+ahead --out $R 2>&1 | tee $R/ahead-log.txt
  timeout 150 $B --shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --no-torch --no-deno --label ahead-step \
    2>&1 | grep -E "native" | tee -a $R/ahead-log.txt
  exit
fi
if [ "$1" = ahead2 ] || [ "$1" = ahead3 ]; then
  # 15k (ahead2): pipelined and step-by-step SmolLM2 / Gemma f16 before encode-ahead (.perf/old:
  # the tree before, `git archive`) and after, alternating twice (15j's pipelined SmolLM2 was 381
  # tok/s); 15l (ahead3): the same after pipelined steps stopped encoding ahead (they had: a
  # buffer that never matched, every step)
  for i in 1 2; do
    for t in .perf/old .; do
      (cd $t && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 benchmarks/bench_compare.py --shapes smollm2-135m-f16,gemma3-270m-f16 \
        --no-deno --no-torch --label "$1 $t" --out $R) 2>&1 | grep -E "native" | sed "s|^|$t |" | tee -a $R/$1-log.txt
    done
  done
  exit
fi
if [ "$1" = ahead4 ]; then
  # 15m / 15n: encode-ahead off and on alternating in one process (bench_ahead.py; what ran was
  # its first form, .perf/probe/ahead_state.py, output in h200-run15mn-ahead-state-log.txt)
  timeout 200 python3 benchmarks/bench_ahead.py --out $R 2>&1 | tee $R/ahead4-log.txt
  exit
fi
if [ "$1" = table ]; then
  # 15i: the final table, default (autotuned) plans, each row with its dispatch floor and WebGPU
  # ceiling; the Deno rows on the page's rule; PyTorch eager and HF generate on the f16 rows
  timeout 560 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --label final 2>&1 | tee $R/final-log.txt
  exit
fi
