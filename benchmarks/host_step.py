"""Host cost per token of pipelined decode (issue 16: the browser binding at >= 0.8x native),
both bindings: the native one in this CPython (wgpu-py) and the browser one in Pyodide inside
Deno (benchmarks/deno/host_step.py). Prints µs per token (the loop, `_Pipeline.submit`,
`_Pipeline.read`) and writes them to --out.

    python3 benchmarks/host_step.py [--shape smollm2-135m-f16] [--new-tokens 64] [--deno PATH]
        [--real-layers 2] [--profile 25] [--out bench-results/host-step.json]

"stub" rows replace the GPU calls by no-ops (browser: the JS helper's submit and readU32;
native: encoding, queue.submit and the mapped read), so they time the Python (and FFI, event
loop) alone, whatever the adapter; "real" rows run the real binding on a --real-layers copy of
the shape (its weights written), whose wall time includes lavapipe's work.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_compare import SHAPES, find_deno, random_backend, run_deno  # noqa: E402

from pyapp.bench import pipelined_host_us  # noqa: E402


def native_row(cfg, dtype, P, N, depth, stub, profile):
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    be = random_backend(dev, cfg, dtype, variants={"linear": "row"} if stub else None, write=not stub)
    if stub:
        dev.command_buffer = lambda *a, **k: None
        dev.submit_buffer = lambda *a, **k: None
        dev.read = lambda buf, off, size: b"\0" * size
    prompt = [1 + (i * 7919) % (be.model.vocab - 1) for i in range(P)]
    r = asyncio.run(pipelined_host_us(be, P + N + 8, prompt, N, depth, profile))
    r.update(binding="native (wgpu-py)", stub=stub, layers=be.model.n_layers, dtype=dtype)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smollm2-135m-f16", help="a shape of bench_compare.SHAPES")
    ap.add_argument("--prompt-tokens", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--real-layers", type=int, default=0, help="also real rows on this many layers (0: none)")
    ap.add_argument("--real-tiny", action="store_true",
                    help="the real rows' model also 64 wide with 512 ids (little GPU work: the host's loop shows)")
    ap.add_argument("--deno", default=None)
    ap.add_argument("--no-native", action="store_true")
    ap.add_argument("--empty", action="store_true",
                    help="also a browser row on the real binding with empty passes (process CPU µs per token)")
    ap.add_argument("--pending", action="store_true",
                    help="also a browser stub row whose pipelined reads are still pending when taken (an await each)")
    ap.add_argument("--profile", type=int, default=0, help="cProfile's top N functions of the stub rows")
    ap.add_argument("--pyodide", default=str(ROOT / "node_modules/pyodide"))
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "host-step.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    cfg, dtype = SHAPES[a.shape]
    runs = [(cfg, True)]
    if a.real_layers:
        small = dict(cfg, num_hidden_layers=a.real_layers)
        if a.real_tiny:
            small.update(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=32, vocab_size=512)
        if "layer_types" in small:
            small["layer_types"] = small["layer_types"][:a.real_layers]
        runs.append((small, False))
    rows = []
    deno = find_deno(a.deno)
    for c, stub in runs:
        if not a.no_native:
            rows.append(native_row(c, dtype, a.prompt_tokens, a.new_tokens, a.depth, stub, a.profile if stub else 0))
        if deno:
            r = run_deno(deno, c, dtype, a.prompt_tokens, a.new_tokens, None, a.pyodide, a.depth,
                         extra={"script": "host_step.py", "stub": stub, "profile": a.profile if stub else 0})
            rows.append(r)
            if stub and a.empty:
                rows.append(run_deno(deno, c, dtype, a.prompt_tokens, a.new_tokens, None, a.pyodide, a.depth,
                                     extra={"script": "host_step.py", "stub": False, "empty": True}))
            if stub and a.pending:
                rows.append(run_deno(deno, c, dtype, a.prompt_tokens, a.new_tokens, None, a.pyodide, a.depth,
                                     extra={"script": "host_step.py", "stub": True, "pending": True}))
    for r in rows:
        if "error" in r:
            print("error:", r["error"])
            continue
        print(f"{r['binding']:43s} {'stub' if r['stub'] else 'real'} {r['layers']:3d} layers: "
              f"loop {r['loop_us_per_token']:8.1f} us/token, submit {r['submit_us_per_token']:8.1f}, "
              f"read {r['read_us_per_token']:8.1f}"
              + (f", process CPU {r['cpu_us_per_token']:8.1f}" if "cpu_us_per_token" in r else ""))
        if r.get("profile"):
            print(r["profile"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"shape": a.shape, "new_tokens": a.new_tokens, "depth": a.depth,
                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
