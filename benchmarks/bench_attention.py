"""The decode split-attention kernels against each other, kernel alone (native binding):
attention_split (a lane per key, then per-key serial accumulation) and attention_dims
(fixed-trip key loops, lanes own head dims), the same dispatch grid and partials.

    PYTHONPATH=$PWD python3 benchmarks/bench_attention.py [--reps 50] [--rounds 3] [--out bench-results]

Shapes: SmolLM2 (9/3 heads, hd 64) and Llama 7B (32/32, hd 128), one decode token at
context 96 and 1,024 of a 2,048-key cache (64 splits of 32 keys, the empty ones included).
µs per dispatch: `time_recording` (reps replays in one submit, minus an empty submit), the
kernels interleaved round by round, best of `rounds`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp import kernels  # noqa: E402
from pyapp.bench import time_recording  # noqa: E402
from pyapp.gpu.lower import ATTN_KERNELS, ATTN_SPLIT  # noqa: E402


def bench(dev, H, HKV, HD, ctx, cap, reps, rounds):
    import numpy as np
    rng = np.random.default_rng(0)
    params = dev.create_buffer(512, "uniform")
    dev.write(params, 0, array("I", [1, ctx, 0, 0, 0, 1, 0, 0]))

    def buf(n):
        b = dev.create_buffer(4 * n)
        dev.write(b, 0, rng.standard_normal(n).astype(np.float32))
        return b
    cs, q, k, v = buf(cap * HD), buf(H * HD), buf(HKV * HD), buf(HKV * HD)
    kc, vc = buf(HKV * cap * HD), buf(HKV * cap * HD)
    ns, sl = -(-cap // ATTN_SPLIT), ATTN_SPLIT
    part, sync = buf(H * ns * (HD + 2)), buf(4)
    disp = {}
    for name, kern in ATTN_KERNELS.items():
        src = kernels.render(kern, H=H, HKV=HKV, HD=HD, HALF=HD // 2, CAP=cap, SCALE=repr(HD ** -0.5),
                             NS=ns, SL=sl, DPL=-(-HD // 64))
        pipe = dev.pipeline(src)
        ent = {0: (params, 0, 32), 1: cs, 2: q, 3: k, 4: v, 5: kc, 6: vc, 7: part}
        disp[name] = (pipe, dev.bind_group(pipe, ent), H, ns, 1)
    best = {n: float("inf") for n in disp}
    for _ in range(rounds):
        for n, d in disp.items():
            best[n] = min(best[n], time_recording(dev, [d], [], reps, sync, rounds=1)[0] * 1e6)
    return {"what": f"H={H}/{HKV} hd={HD} ctx={ctx} cap={cap}", **{f"{n}_us": t for n, t in best.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cap", type=int, default=2048)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    rows = [bench(dev, H, HKV, HD, ctx, a.cap, a.reps, a.rounds)
            for H, HKV, HD in ((9, 3, 64), (32, 32, 128)) for ctx in (96, 1024)]
    for r in rows:
        print(f"{r['what']:36s} split {r['split_us']:9.1f} us   dims {r['dims_us']:9.1f} us  "
              f"({r['split_us'] / r['dims_us']:.2f}x)")
    out = Path(a.out) / f"attention-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
