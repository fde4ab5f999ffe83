# H100 run 3 (device kind nvidia-h100-x1): the sgrR GEMV variants (linear_sgr.wgsl) and the lm head's own
# measured variant (`linear_head`). Run from the repo root; the call was:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; set -o pipefail; bash docs/data/h100-run3-script.sh 2>&1 | tee $OUT/log.txt
#!/usr/bin/env bash
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,clocks.max.sm,driver_version --format=csv
echo "== torch reference"
timeout 90 python3 docs/data/h100-torch-ref.py $OUT/torch-ref.json
echo "== bench kernels --big --reps 50 (all GEMV variants incl. sgr2/4/8)"
timeout 300 python3 -m pyapp bench kernels --big --reps 50 --out $OUT/kernels.json
echo "== lm head 49152x576 f32 T=1, 3 repeats x (50 reps, best of 6 rounds), interleaved"
timeout 60 python3 - <<'PY' | tee $OUT/lmhead-repeats.txt
from pyapp.gpu.native import NativeDevice
from pyapp.gpu.backend import measure_linear, _run_sync
dev = NativeDevice.create()
N, K = 49152, 576
for i in range(3):
    r = _run_sync(measure_linear(dev, N, K, ["sg", "sg4", "sgr2", "sgr4", "sgr8"], reps=50, rounds=5))
    print(i, "  ".join(f"{v} {s*1e6:.1f}us {N*K*4/s/1e9:.0f}GB/s" for v, s in r.items()))
PY
for i in 1 2; do
  echo "== decode auto (new default: linear_head autotuned) ($i)"
  timeout 60 python3 -m pyapp bench decode --random --prompt-tokens 64 --new-tokens 128 --out $OUT/decode-new-$i.json
  echo "== decode auto, lm head = layers' variant (before) ($i)"
  timeout 60 python3 -m pyapp bench decode --random --prompt-tokens 64 --new-tokens 128 --linear-head same --out $OUT/decode-before-$i.json
done
echo "== autotune cache"
cat ~/.cache/pyapp/gpu-autotune.json
