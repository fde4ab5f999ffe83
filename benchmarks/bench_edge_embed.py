"""Browser-edge embeddings benchmark: MiniLM in headless Chromium (SwiftShader WebGPU) against the
real server app on loopback (the harness of tests/test_edge_browser.py).  Prints numbers and
writes ``bench-results/edge-embed.json``; asserts nothing timed.

    python3 benchmarks/bench_edge_embed.py [--splits 0,3] [--label after]

For each split: one warm-up call (loads the tail, compiles the plans), then ``pyapp.embed`` of a
batch of 32 sentences of mixed lengths (3..60 words), timed in the page; embeddings/s = 32 / s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from test_edge_harness import LiveServer, launch, open_page  # noqa: E402

MINI = "minilm-l6"
WORDS = ("river lantern quietly seven harbor copper orbit meadow stone violin glacier "
         "summer ledger cobalt thunder pocket velvet signal marble candle").split()


def batch(n=32):
    """n sentences of 3..60 words, deterministic."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + (i * 17) % 58)) + "."
            for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", default="0,3")
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "edge-embed.json"))
    a = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright
    srv = LiveServer(models=(MINI,), preload=True)
    texts = batch()
    res = {}
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            page = open_page(b, srv.url)
            for k in (int(s) for s in a.splits.split(",")):
                page.evaluate("([t, k]) => pyapp.embed(t, {model: 'minilm-l6', split: k})", [texts[:2], k])
                ms = page.evaluate("async ([t, k]) => { const t0 = performance.now(); "
                                   "await pyapp.embed(t, {model: 'minilm-l6', split: k}); "
                                   "return performance.now() - t0; }", [texts, k])
                res[str(k)] = {"batch": len(texts), "seconds": round(ms / 1e3, 3),
                               "embeddings_per_s": round(len(texts) / (ms / 1e3), 2)}
                print(f"split {k}: {len(texts)} embeddings in {ms / 1e3:.2f} s = "
                      f"{len(texts) / (ms / 1e3):.2f} embeddings/s", flush=True)
            b.close()
    finally:
        srv.close()
    out_path = Path(a.out)
    out_path.parent.mkdir(exist_ok=True)
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    old[a.label] = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "splits": res}
    out_path.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
