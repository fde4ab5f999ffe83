"""Split-move benchmark (server half of issue 14): time and bytes of one layer's KV hand-over over
the session WebSocket, down (server -> client, with the commit) and up (client -> server), at
several positions, f32 and f16 on the wire.

    python3 benchmarks/bench_progressive.py [--model smollm2-135m] [--positions 64,256,1024]
                                            [--moves 8] [--out bench-results/progressive-server.json]

`pyapp serve` runs as its own process (numpy backend, OMP_NUM_THREADS=1), client over loopback.
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
    a = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
