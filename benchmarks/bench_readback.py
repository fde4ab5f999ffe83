"""How the native binding's readback waits, side by side on one backend (issue 16):
"map_sync" (wgpu-py's: every submission done) and "index" (the submission that wrote the
buffer, then map_sync; the default). Step-by-step decode reads each token right after its
submit; pipelined decode reads token n with step n+1 in flight. (Run 13d also measured
non-blocking polls after the wait, "index_spin", slower than "index": removed.)

    PYTHONPATH=$PWD python3 benchmarks/bench_readback.py [--shapes smollm2-135m-f16,llama-7b-f16]

Random weights of each shape (bench_compare's), autotuned variants, greedy, 32-token prompt,
64 new tokens, the modes interleaved over `--rounds`, best tok/s of each; JSON to --out.
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

MODES = ("map_sync", "index")


def one_shape(dev, name, P, N, rounds, depths=(2,), modes=MODES):
    from pyapp.sampling import SamplingParams
    be = bc.random_backend(dev, *bc.SHAPES[name])
    sp, prompt = SamplingParams(), [1 + (i * 7919) % (be.model.vocab - 1) for i in range(P)]
    keys = [f"{m}/step" for m in modes] + [f"{m}/pipelined{d}" for m in modes for d in depths]
    best = {k: 0.0 for k in keys}
    ids = {}
    for _ in range(rounds):
        for m in modes:
            dev.wait_mode = m
            c = be.new_cache(P + N + 8)
            tok = be.step(ids=prompt, cache=c, params=sp)
            t, toks = time.perf_counter(), [tok]
            for n in range(1, N + 1):
                tok = be.step(ids=[tok], cache=c, params=sp, n=n)
                toks.append(tok)
            best[f"{m}/step"] = max(best[f"{m}/step"], N / (time.perf_counter() - t))
            for d in depths:
                c = be.new_cache(P + N + 8)
                res = be.decode(prompt, c, sp, N + 1, depth=d)     # timed token 0 -> token N
                k = f"{m}/pipelined{d}"
                best[k] = max(best[k], N / res.decode_seconds)
                ids[(m, d)] = (toks, res.ids)
    be.destroy()
    ref = next(iter(ids.values()))[0]
    same = all(a == ref and b == ref for a, b in ids.values())
    return {"shape": name, "variants": be.variants, "tok_per_s": best, "ids_equal": same}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m-f16,llama-1b-f16,llama-7b-f16")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--depths", default="2,4", help="pipeline depths (steps in flight), comma list")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    rows = []
    for name in a.shapes.split(","):
        r = one_shape(dev, name, a.prompt_tokens, a.new_tokens, a.rounds,
                      tuple(int(d) for d in a.depths.split(",")), tuple(a.modes.split(",")))
        rows.append(r)
        print(f"{name:18s} " + "  ".join(f"{k} {v:6.1f}" for k, v in r["tok_per_s"].items())
              + f"  ids equal: {r['ids_equal']}", flush=True)
    out = Path(a.out) / f"readback-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
