"""The fused kernels against the dispatches they replace, kernel by kernel (native binding).

    PYTHONPATH=$PWD python3 benchmarks/bench_fused.py [--reps 50] [--out bench-results]

* attention at SmolLM2's (9/3 heads, hd 64) and Llama 7B's (32/32, hd 128) shapes, one
  decode token at context 128 / 1,024 / 2,048: rope + kv_write + attention_wg (3 dispatches)
  against attention_split (+ attention_merge when the context is split);
* RMSNorm at D = 576 / 2,048 / 4,096: norm (64 lanes) + the residual add before it against add_norm.
µs per decode token per layer: `time_recording` (reps replays in one pass, one submit,
minus an empty submit + readback).
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

F32 = ("@group(0) @binding(1) var<storage, read> w: array<f32>;\n"
       "fn ldw(i: u32) -> f32 { return w[i]; }")


def split_plan(ctx, cap, sl=128):
    """(NS, SL) for one decode token: splits of `sl` keys (one when the cache is short)."""
    ns = -(-cap // sl)
    return (1, cap) if ns == 1 else (ns, sl)


def bench_attention(dev, H, HKV, HD, ctx, reps):
    cap = ctx + 8
    params = dev.create_buffer(512, "uniform")
    dev.write(params, 0, array("I", [1, ctx, 0, 0, 0, 1, 0, 0]))
    buf = lambda n: dev.create_buffer(4 * n)  # noqa: E731
    cs, q, k, v = buf(cap * HD), buf(H * HD), buf(HKV * HD), buf(HKV * HD)
    kc, vc, y = buf(HKV * cap * HD), buf(HKV * cap * HD), buf(H * HD)
    sync = buf(4)

    def d(src, ent, gx, gy=1):
        pipe = dev.pipeline(src)
        return (pipe, dev.bind_group(pipe, {0: (params, 0, 32), **ent}), gx, gy, 1)
    c = dict(H=H, HKV=HKV, HD=HD, CAP=cap, SCALE=repr(HD ** -0.5), CAUSAL="true", WIN=0)
    old = [d(kernels.render("rope", H=H, HKV=HKV, HD=HD, HALF=HD // 2), {1: cs, 2: q, 3: k}, -(-(H + HKV) * HD // 2 // 64)),
           d(kernels.render("kv_write", HKV=HKV, HD=HD, CAP=cap), {1: k, 2: v, 3: kc, 4: vc}, -(-HKV * HD // 64)),
           d(kernels.render("attention_wg", **c), {1: q, 2: kc, 3: vc, 4: y}, H)]
    ns, sl = split_plan(ctx, cap)
    part = buf(H * ns * (HD + 2)) if ns > 1 else y
    new = [d(kernels.render("attention_split", H=H, HKV=HKV, HD=HD, HALF=HD // 2, CAP=cap, SCALE=repr(HD ** -0.5),
                            NS=ns, SL=sl, DPL=-(-HD // 64)), {1: cs, 2: q, 3: k, 4: v, 5: kc, 6: vc, 7: part}, H, ns)]
    if ns > 1:
        new.append(d(kernels.render("attention_merge", HD=HD, NS=ns, H=H), {1: part, 2: y}, H))
    t_old, _ = time_recording(dev, old, [], reps, sync)
    t_new, _ = time_recording(dev, new, [], reps, sync)
    return {"what": f"attention H={H}/{HKV} hd={HD} ctx={ctx}", "old_us": t_old * 1e6, "new_us": t_new * 1e6,
            "old_dispatches": len(old), "new_dispatches": len(new), "splits": ns}


def bench_norm(dev, D, reps):
    params = dev.create_buffer(512, "uniform")
    dev.write(params, 0, array("I", [1, 0, 0, 0, 0, 1, 0, 0]))
    w, x, r, y, sync = (dev.create_buffer(4 * D) for _ in range(5))

    def d(src, ent, gx):
        pipe = dev.pipeline(src)
        return (pipe, dev.bind_group(pipe, {0: (params, 0, 32), **ent}), gx, 1, 1)
    add = kernels.render("add", DECL="@group(0) @binding(2) var<storage, read> b: array<f32>;\n"
                                     "@group(0) @binding(3) var<storage, read_write> y: array<f32>;",
                         W=D, BODY="y[i] = y[i] + b[i];")
    norm = kernels.render("norm", WDECL=F32, BDECL="fn ldb(i: u32) -> f32 { return 0.0; }",
                          XDECL="@group(0) @binding(3) var<storage, read> xin: array<f32>;\n"
                                "fn ldx(i: u32) -> f32 { return xin[i]; }",
                          D=D, WG=64, EPS="1e-05", LAYER="false", LASTROW="false")
    old = [d(add, {2: r, 3: x}, -(-D // 64)), d(norm, {1: w, 3: x, 4: y}, 1)]
    new = [d(kernels.render("add_norm", WDECL=F32, D=D, EPS="1e-05", ADD="true"), {1: w, 2: r, 3: x, 4: y}, 1)]
    t_old, _ = time_recording(dev, old, [], reps, sync)
    t_new, _ = time_recording(dev, new, [], reps, sync)
    return {"what": f"add + rms_norm D={D}", "old_us": t_old * 1e6, "new_us": t_new * 1e6,
            "old_dispatches": 2, "new_dispatches": 1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--small", action="store_true", help="CPU adapters: ctx 128 and D 576 only")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    rows = []
    for H, HKV, HD in ((9, 3, 64), (32, 32, 128)):
        for ctx in ((128,) if a.small else (128, 1024, 2048)):
            rows.append(bench_attention(dev, H, HKV, HD, ctx, a.reps))
    for D in ((576,) if a.small else (576, 2048, 4096)):
        rows.append(bench_norm(dev, D, a.reps))
    for r in rows:
        print(f"{r['what']:40s} {r['old_dispatches']} disp {r['old_us']:8.1f} us -> "
              f"{r['new_dispatches']} disp {r['new_us']:8.1f} us  ({r['old_us'] / r['new_us']:.1f}x)")
    out = Path(a.out) / f"fused-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
