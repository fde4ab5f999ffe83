"""Weight streaming on the wire: what the page fetches against what crosses the wire, with the
ranges of a shared file read through the browser's HTTP cache (``httpCache: true``, as every
load did before ``shared_files``) and around it (``'no-store'``, the default for a file the load reads
several ranges of, ``pyapp.edge.stream.shared_files``).  Headless Chromium against the real
server app on loopback; the server's middleware logs every model-file request and the bytes it
sent.  Alternates the two modes on fresh pages (an empty HTTP cache each).  Prints numbers and
writes them; asserts nothing.

    python3 benchmarks/bench_wire.py [--rounds 3] [--out bench-results/wire.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from test_edge_harness import LiveServer, launch, open_page  # noqa: E402

CASES = [("smollm2-135m", "f32"), ("smollm2-135m", "q4_1"), ("minilm-l6", "f32")]
MODES = {"through the HTTP cache": True, "around it (no-store)": False}

LOAD = """
import json, time
import pyapp.edge.stream as s, pyapp.edge.measure as ms
m = await s.fetch_json(s.absolute_url('', '/models/{model}/manifest.json?dtype={fmt}'))
sink = ms.GpuBufferSink(await ms.raw_device())
t0 = time.perf_counter()
st = await s.stream_chunks(m, m['chunks'], sink, opts={{'httpCache': {cache}}})
json.dumps({{'seconds': time.perf_counter() - t0, 'bytes': st.bytes, 'fetches': st.requests,
            'shared_files': len(s.shared_files(m['chunks']))}})
"""


def one(browser, server, model, fmt, cache):
    page = open_page(browser, server.url)
    try:
        server.faults.seen.clear()
        r = json.loads(page.evaluate("(c) => pyapp.runPython(c)", LOAD.format(model=model, fmt=fmt, cache=cache)))
        wire = [x for x in server.faults.seen if x[1]]          # the Range requests: weights
        r.update(wire_requests=len(wire), wire_bytes=sum(x[2] for x in wire))
        return r
    finally:
        page.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench-results/wire.json")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    server = LiveServer(models=("smollm2-135m", "minilm-l6"), preload=False)
    out = {"rounds": a.rounds, "cases": {}}
    try:
        with sync_playwright() as p:
            browser = launch(p, webgpu=True)
            for model, fmt in CASES:
                runs = {m: [] for m in MODES}
                for _ in range(a.rounds):
                    for mode, cache in MODES.items():           # alternating: same machine state
                        runs[mode].append(one(browser, server, model, fmt, "True" if cache else "False"))
                rows = {}
                for mode, rs in runs.items():
                    rows[mode] = {"load_s_median": round(statistics.median(r["seconds"] for r in rs), 3),
                                  "load_s": [round(r["seconds"], 3) for r in rs],
                                  "weight_bytes": rs[0]["bytes"], "page_fetches": rs[0]["fetches"],
                                  "wire_requests": [r["wire_requests"] for r in rs],
                                  "wire_bytes_over_weights": [round(r["wire_bytes"] / r["bytes"], 3) for r in rs],
                                  "shared_files": rs[0]["shared_files"]}
                    w = rows[mode]
                    print(f"{model} {fmt:5s} {mode:24s} load {w['load_s_median']:6.2f} s (median of {a.rounds}), "
                          f"{w['weight_bytes'] / 1e6:7.1f} MB in {w['page_fetches']} fetches; on the wire "
                          f"{w['wire_requests']} requests, {w['wire_bytes_over_weights']} x the weight bytes",
                          flush=True)
                out["cases"][f"{model}/{fmt}"] = rows
            browser.close()
    finally:
        server.close()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
