"""Split-move benchmark (server half of issue 14): time and bytes of one layer's KV hand-over over
the session WebSocket, down (server -> client, with the commit) and up (client -> server), at
several positions, f32 and f16 on the wire.

    python3 benchmarks/bench_progressive.py [--model smollm2-135m] [--positions 64,256,1024]
                                            [--moves 8] [--out bench-results/progressive-server.json]

`pyapp serve` runs as its own process (numpy backend, OMP_NUM_THREADS=1), client over loopback.

    python3 benchmarks/bench_progressive.py --browser [--tokens 16]

Browser half (headless Chromium, SwiftShader WebGPU, a fresh page per run, same server): time
to the first token (the load included) progressive vs waiting at targets 0 and 15 vs
server-only; tokens/s and the split per decode step -> bench-results/progressive-browser.json,
progressive-browser.csv and (with matplotlib) progressive-browser.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_server import free_port  # noqa: E402


async def one_position(url, model, n_layers, pos, moves, kv_dtype):
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        s = (await c.post("/v1/sessions", json={"model": model, "split": n_layers,
                                                 "context": pos + 8})).json()
        async with connect(url.replace("http", "ws") + s["ws"], max_size=None) as ws:
            rng = np.random.default_rng(0)
            await ws.send(rng.integers(3, 1000, pos).astype("<i4").tobytes())
            await ws.recv()
            down, up, frames = [], [], []
            split = n_layers
            for _ in range(moves):
                t0 = time.perf_counter()
                await ws.send(json.dumps({"op": "move", "split": split - 1, "holds": list(range(n_layers)),
                                          "kv_dtype": kv_dtype}))
                head = json.loads(await ws.recv())
                frames.append(await ws.recv())
                await ws.send(json.dumps({"op": "commit"}))
                json.loads(await ws.recv())
                down.append(time.perf_counter() - t0)
                split -= 1
            for f in reversed(frames):
                t0 = time.perf_counter()
                await ws.send(json.dumps({"op": "move", "split": split + 1}))
                json.loads(await ws.recv())
                await ws.send(f)
                done = json.loads(await ws.recv())
                assert done.get("ok"), done
                up.append(time.perf_counter() - t0)
                split += 1
        await c.delete(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})
    nb = len(frames[0])
    return {"position": pos, "kv_dtype": kv_dtype, "frame_bytes": nb, "bytes_per_position": (nb - 32) / pos,
            "down_ms_p50": 1e3 * float(np.median(down)), "up_ms_p50": 1e3 * float(np.median(up)),
            "down_MBps": nb / float(np.median(down)) / 1e6, "up_MBps": nb / float(np.median(up)) / 1e6,
            "layers": head["layers"]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--positions", default="64,256,1024")
    ap.add_argument("--moves", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench-results/progressive-server.json"))
    ap.add_argument("--browser", action="store_true", help="the Chromium TTFT / split-over-time runs")
    ap.add_argument("--tokens", type=int, default=16)
    a = ap.parse_args(argv)
    if a.browser:
        return browser_main(a)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pyapp", "serve", "--no-setup", "--port", str(port),
                             "--model", a.model, "--max-context", "2048", "--log-level", "warning"],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        n_layers = httpx.get(f"{url}/v1/models/{a.model}").json()["n_layers"]
        rows = []
        for pos in (int(p) for p in a.positions.split(",")):
            for dt in ("f32", "f16"):
                r = asyncio.run(one_position(url, a.model, n_layers, pos, a.moves, dt))
                rows.append(r)
                print(f"pos {pos:5d} {dt}: frame {r['frame_bytes']:>9,} B ({r['bytes_per_position']:.0f} B/pos)  "
                      f"down {r['down_ms_p50']:.1f} ms  up {r['up_ms_p50']:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(10)
    out = {"model": a.model, "rows": rows, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("wrote", a.out)


PROMPT = "Photosynthesis turns sunlight, water and carbon dioxide into"
RUNS = [("server only", {"backend": "server"}), ("15 waiting", {"split": 15, "progressive": False}),
        ("15 progressive", {"split": 15, "progressive": True}), ("0 waiting", {"split": 0, "progressive": False}),
        ("0 progressive", {"split": 0, "progressive": True})]


def browser_main(a):
    sys.path.insert(0, str(ROOT / "tests"))
    from playwright.sync_api import sync_playwright

    from test_edge_harness import LiveServer, launch, open_page
    srv = LiveServer(models=(a.model,), preload=True)
    rows, steps = [], []
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            for name, o in RUNS:
                page = open_page(b, srv.url)
                opts = {"model": a.model, "greedy": True, "maxNewTokens": a.tokens, **o}
                s = page.evaluate("([p, o]) => pyapp.generate(p, o)", [PROMPT, opts])["stats"]
                page.close()
                ttft = s.get("time_to_first_token_with_load", s["time_to_first_token"])
                rows.append({"run": name, "ttft_s": ttft, "tokens": s["tokens"],
                             "tokens_per_second": s["tokens_per_second"], "load_s": s.get("load_seconds", 0),
                             "split_trace": s.get("split_trace"), "handover_bytes": s.get("handover_bytes", 0)})
                t = 0.0
                for i, (k, edge_ms, server_ms) in enumerate(s.get("steps") or []):
                    t += (edge_ms + server_ms) / 1e3
                    steps.append((name, i, round(t, 3), k, round(edge_ms, 1), round(server_ms, 1)))
                print(f"{name:15s} ttft {ttft:6.2f} s  {s['tokens_per_second']:5.2f} tok/s  "
                      f"trace {[(x['token'], x['split']) for x in s.get('split_trace') or []]}")
            b.close()
    finally:
        srv.close()
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "progressive-browser.json").write_text(json.dumps({"model": a.model, "rows": rows}, indent=1))
    with open(out / "progressive-browser.csv", "w") as f:
        f.write("run,step,t_s,split,edge_ms,server_ms\n")
        f.writelines(",".join(map(str, r)) + "\n" for r in steps)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: see the CSV")
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for name in {r[0] for r in steps}:
        pts = [r for r in steps if r[0] == name]
        ax1.step([r[2] for r in pts], [r[3] for r in pts], where="post", label=name)
        ax2.plot([r[2] for r in pts], [1e3 / max(1e-3, r[4] + r[5]) for r in pts], label=name)
    ax1.set_ylabel("split")
    ax2.set_ylabel("tok/s (per step)")
    ax2.set_xlabel("decode time, s")
    ax1.legend()
    fig.savefig(out / "progressive-browser.png", dpi=90)
    print("wrote", out / "progressive-browser.png")


if __name__ == "__main__":
    main()
