"""Where the time of the int8-input Q4_1 GEMV (`sgqwR`, linear_sgq.wgsl WIDE) goes: the kernel as
the plan builds it, and the same kernel with one part taken out of its source, against a kernel
that only streams the same bytes in the same pattern (bench_q4_layout's `stored`) and the bare
dispatch (`floor`). Timing only: the ablated kernels compute garbage.

    PYTHONPATH=$PWD python3 benchmarks/bench_q4_ablate.py [--variant sgqw4] [--variants JSON] [--reps 20]
        [--out bench-results]

Ablations (text patches of the rendered WGSL):
* `no-quantize`: the prologue's loop that quantizes the input row into workgroup memory runs no
  iteration (the barrier stays);
* `no-dot`: every dot4I8Packed(a, b) becomes i32(a ^ b) (one cheap op, the data still used);
* `no-quantize,no-dot`: both.
Every kernel runs over three copies of the weights in turn (more than the H200's 50 MB L2, as in
a decode, where a token's 3.5 GB pass through it), `reps` times, timestamp queries around each.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp import kernels  # noqa: E402
from pyapp.bench import floor_dispatches, gpu_pass_us  # noqa: E402

from bench_q4_layout import R, parse_shapes, timed_device  # noqa: E402
from bench_q4_layout import sources as stream_sources  # noqa: E402

SHAPES = ((12288, 4096), (22016, 4096), (4096, 11008), (32000, 4096))   # 3 copies of each > 50 MB
COPIES = 3
PATCHES = {
    "no-quantize": [("for (var b = l; b < NB; b += 128u) {", "for (var b = l + NB; b < NB; b += 128u) {")],
    "no-dot": [("dot4I8Packed(", "dotx("), ("const M4: u32", "fn dotx(a: u32, b: u32) -> i32 { return i32(a ^ b); }\nconst M4: u32")],
}


def patched_render(patches):
    orig = kernels.render

    def render(name, prelude="", **subs):
        src = orig(name, prelude, **subs)
        if name == "linear_sgq":
            for old, new in patches:
                assert old in src, old
                src = src.replace(old, new)
        return src
    return render, orig


def gemv_plans(dev, N, K, variant, ablation, extra=None):
    """COPIES one-GEMV plans (N x K Q4_1, T = 1) of `variant`, built with `ablation`'s patches."""
    from pyapp.gpu.backend import GpuBackend
    from pyapp.models import Model, op
    m = Model(arch="ablate", config={}, hidden=K, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=K,
              vocab=1, max_context=8, causal=False, embed=[],
              layers=[[op("linear", "x", "y", {"w": "w", "b": None})]], head=[])
    patches = [p for a in ablation.split(",") if a for p in PATCHES[a]]
    render, orig = patched_render(patches)
    kernels.render = render
    try:
        backs = [GpuBackend(dev, m, 0, 1, embed=False, head=False, dtype="q4_1", shapes={"w": (N, K)},
                            max_tokens=1, max_positions=8, variants={"linear": variant, "fuse": False, **(extra or {})},
                            widths={"y": N}) for _ in range(COPIES)]
        plans = [b._plan(1, None, 0, 1, False, False, False, False)[0] for b in backs]
    finally:
        kernels.render = orig
    return backs, [d for p in plans for d in p]


def stream_plans(dev, N, K):
    """bench_q4_layout's `stored` kernel over COPIES weight buffers, its grid, and the same
    dispatches with no work (`floor_dispatches`)."""
    bufs = [dev.create_buffer(N * (K // 32) * 20) for _ in range(COPIES)]
    out = dev.create_buffer(1024)
    p = dev.pipeline(stream_sources(N, K)["stored"])
    stored = [(p, dev.bind_group(p, {0: b, 1: out}), -(-N // (4 * R)), 1, 1) for b in bufs]
    return bufs, {"stored": stored, "floor": floor_dispatches(dev, stored)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="sgqw4")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", help='JSON of more plan keys, e.g. \'{"sgq_groups": 384}\'')
    ap.add_argument("--shapes", help="comma list of NxK (default: Llama 7B's)")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    dev = timed_device()
    if dev is None:
        return 1
    shapes = parse_shapes(a.shapes, SHAPES)
    ablations = ["", "no-quantize", "no-dot", "no-quantize,no-dot"]
    rows = []
    for N, K in shapes:
        mb = N * (K // 32) * 20 / 1e6
        groups, names, keep = [], [], []
        for ab in ablations:
            backs, plan = gemv_plans(dev, N, K, a.variant, ab, json.loads(a.variants or "{}"))
            keep += backs
            groups.append(plan)
            names.append(f"{a.variant} {ab or 'as built'}")
        bufs, st = stream_plans(dev, N, K)
        groups += [st["stored"], st["floor"]]
        names += ["stream only (same pattern)", "floor (same grid)"]
        us = [t / COPIES for t in gpu_pass_us(dev, groups, a.reps, rounds=3)]
        row = {"N": N, "K": K, "MB": mb, "us": dict(zip(names, us))}
        rows.append(row)
        print(f"{N}x{K} ({mb:.1f} MB):", flush=True)
        for n, t in zip(names, us):
            print(f"  {n:32s} {t:8.2f} us  {mb * 1e6 / (t * 1e-6) / 1e9:7.0f} GB/s", flush=True)
        for b in keep:
            b.destroy()
        for b in bufs:
            b.destroy()
    out = Path(a.out) / f"q4-ablate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "variant": a.variant, "variants": a.variants, "reps": a.reps,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
