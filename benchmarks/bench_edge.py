"""Browser-edge benchmark: headless Chromium (SwiftShader WebGPU) against the real server app on
loopback, the same harness as tests/test_edge_browser.py.  Prints numbers; asserts nothing timed.

    python3 benchmarks/bench_edge.py [--splits 0,15,30] [--format f32,q4_1] [--tokens 16]
                                     [--gemma [--gemma-splits 0,9,18] [--gemma-only]]
                                     [--out bench-results/edge.json]

Measures: page boot; weight streaming of every SmolLM2 tail weight at split 0 into fresh GPU
buffers (load time, MB/s, a plain fetch of the same bytes, wasm heap growth, peak JS heap);
greedy generation at each split (time to first token, decode tokens/s, weight load time and MB/s
into the GpuBackend, wasm heap growth during that load, FFI crossings per decode token by source,
GPU memory in use).  Each split loads its tail once and runs one warm-up generation of 2 tokens
first, so TTFT and tokens/s are not the first-compile figures (those are reported separately as
``cold``).  ``--format``: each split in each weight format (the results keyed ``"<split>"`` for
f32, ``"<split>/<format>"`` otherwise).  ``--gemma``: Gemma 3 270M (q4_k_m) at each of ``--gemma-splits``
(default 0) on its own server: load time and MB/s, first token, decode tok/s over
``--gemma-tokens``; ``--gemma-only`` skips SmolLM2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from test_edge_harness import LiveServer, launch, open_page  # noqa: E402

SMOL = "smollm2-135m"
PROMPT = "The capital of France is"


def gen(page, split, n, prompt=PROMPT, fmt="f32", model=SMOL):
    return page.evaluate("([p, k, n, f, m]) => pyapp.generate(p, {model: m, greedy: true, "
                         "maxNewTokens: n, split: k, format: f})", [prompt, split, n, fmt, model])


def bench_gemma(tokens, splits=(0,)):
    """Gemma 3 270M in its GGUF's Q4_K_M blocks at each split (the server's numpy runs layers
    [0, K)): one 1-token run (load + plans, the direct load: progressive off), then ``tokens`` on
    the loaded tail."""
    from playwright.sync_api import sync_playwright
    srv = LiveServer(models=("gemma3-270m",), preload=any(splits))
    runs = {}
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            page = open_page(b, srv.url, timeout_ms=900_000)
            for k in splits:
                cold = gen_fixed(page, k, 1)
                runs[k] = cold, gen_fixed(page, k, tokens)
            b.close()
    finally:
        srv.close()
    out = {}
    for k, (cold, warm) in runs.items():
        ld, s = cold["stats"]["load"], warm["stats"]
        r = {"format": "q4_k_m", "split": k, "weight_bytes": cold["stats"]["weight_bytes"],
             "load_s": cold["stats"]["load_seconds"], "load_mb_per_s": ld["mb_per_s"],
             "load_wasm_heap_growth": ld["wasm_heap_growth"], "cold_ttft_s": cold["stats"]["time_to_first_token"],
             "ttft_s": s["time_to_first_token"], "tokens": s["tokens"], "tokens_per_s": s["tokens_per_second"],
             "gpu_bytes": s["gpu_bytes"]}
        print(f"gemma3-270m q4_k_m split {k}: {r['weight_bytes'] / 1e6:.1f} MB in {r['load_s']:.1f} s "
              f"({r['load_mb_per_s']} MB/s), wasm heap growth {r['load_wasm_heap_growth']} B; ttft {r['ttft_s']:.2f} s "
              f"(cold {r['cold_ttft_s']:.2f} s); {r['tokens_per_s']} tok/s over {r['tokens']} tokens")
        out[str(k)] = r
    return out


def gen_fixed(page, split, n):
    return page.evaluate("([k, n]) => pyapp.generate('The capital of France is', {model: 'gemma3-270m', "
                         "greedy: true, maxNewTokens: n, split: k, format: 'q4_k_m', progressive: false})", [split, n])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", default="0,15,30")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--format", default="f32", help="weight formats, comma-separated (f32,q4_1)")
    ap.add_argument("--gemma", action="store_true", help="also Gemma 3 270M q4_k_m at split 0")
    ap.add_argument("--gemma-tokens", type=int, default=4)
    ap.add_argument("--gemma-splits", default="0", help="Gemma's splits, comma-separated (0,9,18)")
    ap.add_argument("--gemma-only", action="store_true", help="skip SmolLM2 (with --gemma)")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "edge.json"))
    a = ap.parse_args(argv)
    splits = [int(s) for s in a.splits.split(",")]
    fmts = a.format.split(",")

    from playwright.sync_api import sync_playwright
    out = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "model": SMOL, "prompt": PROMPT, "tokens": a.tokens}
    if a.gemma and a.gemma_only:
        out = {"host": out["host"], "model": "gemma3-270m", "prompt": PROMPT, "load_avg": os.getloadavg(),
               "gemma": bench_gemma(a.gemma_tokens, [int(k) for k in a.gemma_splits.split(",")])}
        out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.out}")
        return
    srv = LiveServer(models=(SMOL,), preload=True)
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            out["browser"] = b.version
            t0 = time.time()
            page = open_page(b, srv.url)
            boot = page.evaluate("() => pyapp.boot")
            out["boot"] = {"seconds_wall": round(time.time() - t0, 2),
                           "pyodide_s": round(boot["pyodideMs"] / 1e3, 2),
                           "wheel_s": round(boot["wheelMs"] / 1e3, 2), "via": boot["via"]}
            out["adapter"] = page.evaluate("() => pyapp.adapter()")
            out["default_split"] = page.evaluate(f"() => pyapp.defaultSplit('{SMOL}')")
            print(f"boot {out['boot']}\nadapter {out['adapter'].get('architecture')} "
                  f"(cpu={out['adapter'].get('is_cpu')}); default split {out['default_split']['split']}: "
                  f"{out['default_split']['reason']}")

            st = json.loads(page.evaluate(
                "() => pyapp.runPython(`import json, pyapp.edge.measure as s\n"
                f"json.dumps(await s.bench('{SMOL}', 0, 'writeBuffer'))`)"))
            per = sorted(c["mb_per_s"] for c in st["chunks"])
            out["stream_split0"] = {k: st[k] for k in (
                "bytes", "seconds", "mb_per_s", "plain_fetch_seconds", "upload_ms", "requests",
                "wasm_heap_before", "wasm_heap_after", "wasm_heap_growth", "wasm_heap_growth_ratio",
                "peak_js_heap", "js_heap_before")}
            out["stream_split0"]["chunk_mb_per_s"] = {"min": per[0], "median": per[len(per) // 2],
                                                      "max": per[-1]}
            s = out["stream_split0"]
            print(f"stream split 0: {s['bytes'] / 1e6:.1f} MB in {s['seconds']:.2f} s = {s['mb_per_s']:.1f} MB/s "
                  f"(plain fetch {s['plain_fetch_seconds']:.2f} s); wasm heap growth {s['wasm_heap_growth']} B "
                  f"({100 * s['wasm_heap_growth_ratio']:.4f}%); peak JS heap {s['peak_js_heap'] / 1e6:.0f} MB")

            out["splits"] = {}
            for k, fmt in [(k, f) for f in fmts for k in splits]:
                t1 = time.time()
                cold = gen(page, k, 2, fmt=fmt)      # loads the tail, compiles the plans
                warm = gen(page, k, a.tokens, fmt=fmt)
                s, ld = warm["stats"], cold["stats"]["load"] or {}
                r = {"ttft_s": s["time_to_first_token"], "tokens_per_s": s["tokens_per_second"],
                     "tokens": s["tokens"], "cold_ttft_s": cold["stats"]["time_to_first_token"],
                     "load_s": cold["stats"]["load_seconds"], "weight_bytes": s["weight_bytes"],
                     "load_mb_per_s": ld.get("mb_per_s"), "load_wasm_heap_growth": ld.get("wasm_heap_growth"),
                     "load_peak_js_heap": ld.get("peak_js_heap"), "wasm_heap": s["wasm_heap"],
                     "js_heap": s.get("js_heap"), "gpu_bytes": s["gpu_bytes"],
                     "ffi_per_token": s["ffi_crossings_per_token"], "ffi_per_token_by_source": s["ffi_per_token"],
                     "ffi_first_token": s["ffi_first_token"], "ffi_second_token": s["ffi_second_token"],
                     "cold_ffi_second_token": cold["stats"]["ffi_second_token"], "gpu_stats": s.get("gpu"),
                     "wall_s": round(time.time() - t1, 1)}
                out["splits"][str(k) if fmt == "f32" else f"{k}/{fmt}"] = r
                print(f"split {k:2d} {fmt}: ttft {r['ttft_s'] * 1e3:.0f} ms (cold {r['cold_ttft_s'] * 1e3:.0f} ms), "
                      f"{r['tokens_per_s']:.2f} tok/s over {r['tokens']} tokens; load {r['load_s']:.1f} s "
                      f"{(r['weight_bytes'] or 0) / 1e6:.0f} MB at {r['load_mb_per_s']} MB/s, wasm heap growth "
                      f"{r['load_wasm_heap_growth']} B; GPU memory {r['gpu_bytes'] / 1e6:.0f} MB; "
                      f"FFI/token {r['ffi_per_token']} {r['ffi_per_token_by_source']}")
            out["js_heap_now"] = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : 0")
            b.close()
    finally:
        srv.close()
    if a.gemma:
        out["gemma"] = bench_gemma(a.gemma_tokens, [int(k) for k in a.gemma_splits.split(",")])
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
