"""Gemma 3 270M decode on the native WebGPU binding (lavapipe here) against the numpy executor,
same weights (the store's `q4_k_m` block file), same prompt, greedy; one u32 read back per step.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/bench_gemma.py [--format q4_k_m]
        [--new-tokens 8] [--splits 0,9,18] [--out bench-results]

Prints and writes bench-results/gemma-<time>.json: load seconds, prefill seconds (first step,
pipelines compiled), decode tok/s per split, the time of a layers-only step (all 18 layers, no
head) against a full step (the 262,144 x 640 head and its argmax are the difference), and the
adapter's chosen kernel variants.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp import store  # noqa: E402
from pyapp.gpu import GpuBackend  # noqa: E402
from pyapp.numpy_backend import NumpyBackend  # noqa: E402
from pyapp.tokenizer import Tokenizer  # noqa: E402

PROMPT = "The capital of France is"


def decode(step, ids, n):
    """(seconds of the first step, decode tok/s over n - 1 further steps, ids)."""
    t0 = time.perf_counter()
    out = [step(ids)]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    while len(out) < n:
        out.append(step([out[-1]]))
    return first, (n - 1) / (time.perf_counter() - t0), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="q4_k_m")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--splits", default="0,9,18")
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    a = ap.parse_args()
    d = store.model_path("gemma3-270m")
    ids = Tokenizer.from_pretrained(d).encode(PROMPT).ids
    N, n = 18, a.new_tokens
    res = {"format": a.format, "prompt_tokens": len(ids), "new_tokens": n,
           "load_avg": os.getloadavg(), "splits": {}}
    t0 = time.perf_counter()
    gb = GpuBackend.load(d, a.format)
    res["gpu_load_s"] = time.perf_counter() - t0
    res["device"] = gb.device.info.get("description") or gb.device.info.get("device")
    res["variants"] = gb.variants
    t0 = time.perf_counter()
    nb = NumpyBackend.load(d, a.format)
    res["numpy_load_s"] = time.perf_counter() - t0
    c = nb.new_cache(len(ids) + n)
    import numpy as np
    first, tps, np_ids = decode(lambda s: int(np.argmax(nb.forward(ids=s, cache=c)[-1])), ids, n)
    res["numpy"] = {"first_step_s": first, "tok_s": tps}
    print(f"numpy            first {first:6.2f} s  decode {tps:6.2f} tok/s")
    for split in [int(s) for s in a.splits.split(",")]:
        head = nb.new_cache(len(ids) + n, 0, split) if split else None
        tail = gb.new_cache(len(ids) + n, split, N)

        def step(s, split=split, head=head, tail=tail):
            if not split:
                return gb.step(ids=s, cache=tail)
            x = nb.forward(ids=s, cache=head, start=0, stop=split, head=False)
            return gb.step(x=x, cache=tail, start=split)
        first, tps, got = decode(step, ids, n)
        res["splits"][split] = {"first_step_s": first, "tok_s": tps, "ids_equal_numpy": got == np_ids}
        print(f"wgpu split {split:2d}    first {first:6.2f} s  decode {tps:6.2f} tok/s  ids == numpy: {got == np_ids}")
        tail.destroy()
    c = gb.new_cache(len(ids) + n)
    gb.forward(ids=ids, cache=c, head=False)
    t0 = time.perf_counter()
    for _ in range(3):
        gb.forward(ids=[ids[-1]], cache=c, head=False)
    res["layers_only_step_s"] = (time.perf_counter() - t0) / 3
    print(f"layers-only step {res['layers_only_step_s']:.3f} s (a full step: {1 / res['splits'][0]['tok_s']:.3f} s)"
          if 0 in res["splits"] else "")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gemma-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=1))
    print("wrote", path)
    gb.destroy()


if __name__ == "__main__":
    main()
