# H100 run 1 (device kind nvidia-h100-x1), run from the repo root with this file at .h100run/run.sh and
# docs/data/h100-torch-ref.py at .h100run/torch_ref.py. The call was:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; set -o pipefail; bash .h100run/run.sh 2>&1 | tee $OUT/log.txt
# Run 2 (same warm machine) repeated the decode loop for i in 3 4 5.
#!/usr/bin/env bash
# H100 run: torch reference, pyapp bench kernels --big, decode fused/unfused x2 (random SmolLM2-shape weights)
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,clocks.max.sm,driver_version --format=csv
uname -r; python3 --version
ldconfig -p | grep -c libvulkan
echo "== torch reference"
python3 .h100run/torch_ref.py $OUT/torch-ref.json
echo "== bench kernels --big --reps 50"
python3 -m pyapp bench kernels --big --reps 50 --out $OUT/kernels.json
for i in 1 2; do
  echo "== decode auto fused ($i)"
  python3 -m pyapp bench decode --random --prompt-tokens 64 --new-tokens 128 --out $OUT/decode-fused-$i.json
  echo "== decode unfused ($i)"
  python3 -m pyapp bench decode --random --prompt-tokens 64 --new-tokens 128 --no-fuse --out $OUT/decode-unfused-$i.json
done
echo "== autotune cache"
cat ~/.cache/pyapp/gpu-autotune.json
echo "== torch reference again (after)"
python3 .h100run/torch_ref.py $OUT/torch-ref-2.json
