"""The decode split-attention kernels against each other, kernel alone (native binding):
attention_split (a lane per key walking its row, then the values key by key) and attention_dec
(vec4 loads written out as named registers, lanes sharing keys and head dims), the same
dispatch grid, cache append and partials.

    PYTHONPATH=$PWD python3 benchmarks/bench_attention.py [--reps 50] [--rounds 3] [--out bench-results]

Shapes: SmolLM2 (9/3 heads, hd 64), Llama 3.2 1B (32/8, hd 64), Llama 7B (32/32, hd 128) and
Gemma 3 270M (4/1, hd 256), one decode token at context 96 of a 104-key cache (4 splits of 32
keys, what the decode benchmark runs) and 1,024 of a 2,048-key cache (64 splits, the empty ones
included). µs per dispatch: `time_recording` (reps replays in one submit, minus an empty
submit), the kernels interleaved round by round, best of `rounds`.
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
from pyapp.gpu import wgsl  # noqa: E402
from pyapp.gpu.lower import ATTN_SPLIT, attention_splits  # noqa: E402

SHAPES = ((9, 3, 64), (32, 8, 64), (32, 32, 128), (4, 1, 256))
CONTEXTS = ((96, 104), (1024, 2048))       # (context, cache capacity)


def sources(H, HKV, HD, cap):
    """{name: WGSL} of the two kernels for one decode token, rendered as the lowering does."""
    ns, sl = attention_splits(1, cap)
    common = dict(H=H, HKV=HKV, HD=HD, HALF=HD // 2, CAP=cap, SCALE=repr(HD ** -0.5), NS=ns, SL=sl)
    return ns, {"split": kernels.render("attention_split", DPL=-(-HD // 64), **common),
                "dec": kernels.render("attention_dec", **common, **wgsl.attn_dec_code(HD, sl))}


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
    ns, srcs = sources(H, HKV, HD, cap)
    part, sync = buf(H * ns * (HD + 2)), buf(4)
    disp = {}
    for name, src in srcs.items():
        pipe = dev.pipeline(src)
        ent = {0: (params, 0, 32), 1: cs, 2: q, 3: k, 4: v, 5: kc, 6: vc, 7: part}
        disp[name] = (pipe, dev.bind_group(pipe, ent), H, ns, 1)
    for d in disp.values():                  # first submits of a pipeline: not timed
        time_recording(dev, [d], [], 1, sync, rounds=1)
    best = {n: float("inf") for n in disp}
    for _ in range(rounds):
        for n, d in disp.items():
            best[n] = min(best[n], time_recording(dev, [d], [], reps, sync, rounds=1)[0] * 1e6)
    return {"what": f"H={H}/{HKV} hd={HD} ctx={ctx} cap={cap}", "H": H, "HKV": HKV, "HD": HD,
            "ctx": ctx, "cap": cap, "NS": ns, "SL": ATTN_SPLIT, **{f"{n}_us": t for n, t in best.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    rows = []
    for H, HKV, HD in SHAPES:
        for ctx, cap in CONTEXTS:
            r = bench(dev, H, HKV, HD, ctx, cap, a.reps, a.rounds)
            print(f"{r['what']:38s} split {r['split_us']:9.1f} us   dec {r['dec_us']:9.1f} us  "
                  f"(split / dec {r['split_us'] / r['dec_us']:.2f}x)", flush=True)
            rows.append(r)
    out = Path(a.out) / f"attention-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "reps": a.reps, "rounds": a.rounds, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
