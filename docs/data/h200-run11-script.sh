#!/bin/bash
# H200 run 11 (this wave's last): after the 4-dispatch layer (issue 16), the sgb Q4_1 GEMV and
# f16 storage (13), Gemma 3's shape (18). Carry .perf (gl/ loader debs, whl/ wgpu 0.32 wheels for
# Python 3.12, deno.xz, pyodide/). Part A: "before" (the 5-dispatch plan: rules switched off) and
# "after" on the Llama shapes, Deno rows on two; part B: Gemma 3 270M's shape with a Deno row.
cd "$(dirname "$0")/../.."
for f in .perf/gl/*.deb; do dpkg -x $f /; done; ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .perf/whl/*.whl || exit 1
[ -x /tmp/deno ] || { xz -dc .perf/deno.xz > /tmp/deno && chmod +x /tmp/deno; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
B="python3 benchmarks/bench_compare.py --deno /tmp/deno --pyodide .perf/pyodide --out $OUT"
if [ "$1" = A ]; then
  timeout 130 $B --shapes smollm2-135m-f16,llama-7b-f16 --no-deno --no-torch --label before \
    --variants '{"off": ["fuse_qkv_attention", "fold_merge"]}' 2>&1 | tee $OUT/before-log.txt
  timeout 420 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,llama-7b-f16 --label after 2>&1 | tee $OUT/after-log.txt
elif [ "$1" = P ]; then
  # where a token's GPU time goes (timestamp queries per kernel class), default plans
  timeout 300 $B --shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --no-deno --no-torch --profile \
    --label profile 2>&1 | tee $OUT/profile-log.txt
elif [ "$1" = R ]; then
  # run 11r: readbacks mapped in place (no queue.read_buffer copy-and-submit per token)
  timeout 200 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,llama-7b-f16 --no-deno --no-torch --label mapped \
    2>&1 | tee $OUT/mapped-log.txt
elif [ "$1" = C ]; then
  # after A: the q/k/v-in-attention rule off by default on GPUs; is the folded merge worth it?
  timeout 200 $B --shapes smollm2-135m-f16,llama-1b-f16,llama-7b-f16 --no-deno --no-torch --label fold \
    2>&1 | tee $OUT/fold-log.txt
  timeout 200 $B --shapes smollm2-135m-f16,llama-1b-f16,llama-7b-f16 --no-deno --no-torch --label nofold \
    --variants '{"off": ["fold_merge"]}' 2>&1 | tee $OUT/nofold-log.txt
else
  # the final table: the default plans (q/k/v-in-attention off on GPUs, the merge folded up to
  # 1,024 wide), PyTorch eager + HF generate, Deno on three shapes
  timeout 560 $B --shapes smollm2-135m-f16,smollm2-135m-q4_1,gemma3-270m-f16,gemma3-270m-q4_1,llama-1b-f16,llama-7b-f16,llama-7b-q4_1 \
    --deno-shapes smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16 --label final 2>&1 | tee $OUT/final-log.txt
fi
