"""Interleaved A/B of two decode plans on one adapter: two GpuBackends of the same random
weights (a model's shape; SmolLM2-135M by default) whose variants differ, their decode steps
alternated in blocks, so a shared machine's changing load hits both sides alike (separate
`pyapp bench decode` runs moved 2x on lavapipe with other jobs running). Prints tok/s of each
side, B / A, dispatches per token, the first differing greedy id; writes JSON.

    PYTHONPATH=$PWD python3 benchmarks/bench_ab_decode.py --linear sg \\
        --a '{"off": ["fuse_qkv_attention", "fold_merge"]}' --b '{}' \\
        [--model smollm2-135m] [--format f32] [--prompt-tokens 32] [--new-tokens 32] [--block 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp.bench import device_info, model_for, random_backend  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--format", default="f32")
    ap.add_argument("--linear", default="sg", help="the GEMV variant of both sides")
    ap.add_argument("--a", default='{"off": ["fuse_qkv_attention", "fold_merge"]}', help="JSON: side A's extra variants")
    ap.add_argument("--b", default="{}", help="JSON: side B's extra variants")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--block", type=int, default=4, help="decode steps per turn")
    ap.add_argument("--out", default="bench-results/ab-decode.json")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    from pyapp.sampling import SamplingParams
    dev = NativeDevice.create()
    model, _dir = model_for(a.model)
    base = {"linear": a.linear, "norm_wg": 1 if a.linear == "row" else 64,
            "attention": "row" if a.linear == "row" else "wg"}
    sides = {k: {**base, **json.loads(v)} for k, v in (("A", a.a), ("B", a.b))}
    P, N, sp = a.prompt_tokens, a.new_tokens, SamplingParams()
    prompt = [1 + (i * 7919) % (model.vocab - 1) for i in range(P)]
    st = {}
    for k, v in sides.items():
        b = random_backend(dev, model, a.format, variants=v)
        warm = b.new_cache(P + N + 8)                 # pipelines and plans built here
        b.step(ids=[b.step(ids=prompt, cache=warm, params=sp)], cache=warm, params=sp, n=1)
        c = b.new_cache(P + N + 8)
        st[k] = {"b": b, "c": c, "tok": b.step(ids=prompt, cache=c, params=sp), "ids": [], "s": 0.0, "d": 0}
    for n0 in range(1, N + 1, a.block):
        for k, s in st.items():
            d0, t = s["b"].stats["dispatches"], time.perf_counter()
            for n in range(n0, min(N + 1, n0 + a.block)):
                s["tok"] = s["b"].step(ids=[s["tok"]], cache=s["c"], params=sp, n=n)
                s["ids"].append(s["tok"])
            s["s"] += time.perf_counter() - t
            s["d"] += s["b"].stats["dispatches"] - d0
    res = {"device": device_info(dev), "model": a.model, "format": a.format, "prompt_tokens": P,
           "new_tokens": N, "block": a.block, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for k, s in st.items():
        res[k] = {"variants": sides[k], "decode_tokens_per_s": N / s["s"], "ms_per_token": s["s"] / N * 1e3,
                  "dispatches_per_token": s["d"] / N, "ids": s["ids"][:8]}
        print(f"{k}: {res[k]['decode_tokens_per_s']:.3g} tok/s  {res[k]['ms_per_token']:.4g} ms/token  "
              f"{res[k]['dispatches_per_token']:.0f} dispatches/token  {json.dumps(sides[k])}")
    res["B_over_A"] = res["B"]["decode_tokens_per_s"] / res["A"]["decode_tokens_per_s"]
    diff = [i for i, (x, y) in enumerate(zip(st["A"]["ids"], st["B"]["ids"])) if x != y]
    res["first_id_diff"] = diff[0] if diff else None
    print(f"B / A: {res['B_over_A']:.3f}   first differing greedy id: {res['first_id_diff']}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
