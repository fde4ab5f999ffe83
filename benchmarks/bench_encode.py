"""Host cost of encoding one decode token (native binding), wgpu-py's pass methods against
wgpu-native's calls (`NativeDevice.encode`), interleaved on the same plan (issue 16).

    PYTHONPATH=$PWD python3 benchmarks/bench_encode.py [--shapes smollm2-135m-f16,llama-7b-f16]

Weights are allocated, not written (encoding does not read them); autotuned variants.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_compare as bc  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.bench import host_encode_ms
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    raw, rows = dev._pass_calls, []
    for name in a.shapes.split(","):
        be = bc.random_backend(dev, *bc.SHAPES[name], write=False)
        rec, _ = be._plan(1, be.new_cache(104), 0, be.model.n_layers, True, True, False, True)
        best = {"wgpu-py": 1e9, "wgpu-native": 1e9}
        for _ in range(5):
            dev._pass_calls = None
            best["wgpu-py"] = min(best["wgpu-py"], host_encode_ms(dev, rec, a.reps))
            dev._pass_calls = raw
            best["wgpu-native"] = min(best["wgpu-native"], host_encode_ms(dev, rec, a.reps))
        rows.append({"shape": name, "dispatches": len(rec), "encode_ms": best})
        print(f"{name:18s} {len(rec)} dispatches: wgpu-py {best['wgpu-py']:.3f} ms, "
              f"wgpu-native calls {best['wgpu-native']:.3f} ms", flush=True)
        be.destroy()
    out = Path(a.out) / f"encode-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
