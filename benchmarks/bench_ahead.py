"""Encode-ahead on and off in one process, alternating (`GpuBackend.encode_ahead`), native binding:
64 step-by-step tokens (the path encode-ahead changes), then the host encoding of a token's pass
with the last step's encoded-ahead buffer still held and after dropping it, then a pipelined
decode (which never encodes ahead: does a step-by-step run with it leave anything slower?).

    PYTHONPATH=$PWD python3 benchmarks/bench_ahead.py [--shapes smollm2-135m-f16,gemma3-270m-f16] [--rounds 4]

Random weights of each shape (bench_compare's), autotuned variants, greedy, 32-token prompt.
Prints each round and the medians; writes bench-results/ahead-<time>.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_compare as bc  # noqa: E402

from pyapp.bench import host_encode_ms  # noqa: E402

FIELDS = ("step_tok_s", "pipelined_tok_s", "encode_held_ms", "encode_dropped_ms", "encode_after_pipelined_ms")


def one(dev, be, prompt, ahead, sp):
    be.encode_ahead = ahead
    c = be.new_cache(len(prompt) + 80)
    tok = be.step(ids=prompt, cache=c, params=sp)
    t = time.perf_counter()
    for n in range(1, 65):
        tok = be.step(ids=[tok], cache=c, params=sp, n=n)
    step = 64 / (time.perf_counter() - t)
    rec, _ = be._plan(1, c, 0, be.model.n_layers, True, True, False, True)
    held = host_encode_ms(dev, rec)
    dev._ahead = None                       # drop what the step run left encoded
    gc.collect()
    dropped = host_encode_ms(dev, rec)
    r = be.decode(prompt, be.new_cache(len(prompt) + 80), sp, 65)
    return dict(zip(FIELDS, (step, 64 / r.decode_seconds, held, dropped, host_encode_ms(dev, rec))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m-f16,gemma3-270m-f16")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    from pyapp.sampling import SamplingParams
    dev = NativeDevice.create()
    sp = SamplingParams()
    rows = []
    for shape in a.shapes.split(","):
        cfg, dt = bc.SHAPES[shape]
        be = bc.random_backend(dev, cfg, dt, bc.autotuned(dev, cfg, dt))
        prompt = [1 + (i * 7919) % (be.model.vocab - 1) for i in range(32)]
        runs = {False: [], True: []}
        for rnd in range(a.rounds):
            for ahead in (False, True):
                m = one(dev, be, prompt, ahead, sp)
                runs[ahead].append(m)
                print(f"{shape} {rnd} {'ahead' if ahead else 'off  '} " + "  ".join(f"{k} {m[k]:.3f}" for k in FIELDS),
                      flush=True)
        for ahead in (False, True):
            med = {k: statistics.median(m[k] for m in runs[ahead]) for k in FIELDS}
            rows.append({"shape": shape, "encode_ahead": ahead, "median": med, "rounds": runs[ahead]})
            print(f"{shape} {'ahead' if ahead else 'off  '} medians: " + "  ".join(f"{k} {med[k]:.3f}" for k in FIELDS))
        be.destroy()
    out = Path(a.out) / f"ahead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "args": vars(a), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
