"""Split-move benchmark (server half of issue 14): time and bytes of one layer's KV hand-over over
the session WebSocket, down (server -> client, with the commit) and up (client -> server), at
several positions, f32 and f16 on the wire.

    python3 benchmarks/bench_progressive.py [--model smollm2-135m] [--positions 64,256,1024]
                                            [--moves 8] [--out bench-results/progressive-server.json]

`pyapp serve` runs as its own process (numpy backend, OMP_NUM_THREADS=1), client over loopback.

    python3 benchmarks/bench_progressive.py --browser [--tokens 32]

Browser half (headless Chromium, SwiftShader WebGPU, a fresh page per run, same server): time
to the first token (the load included) progressive vs waiting at targets 0 and 15 vs
server-only, and 'auto'; the split and tokens/s per decode step against time (CSV + ASCII
plots); the bytes of each KV hand-over per layer and per position ->
bench-results/progressive-browser.{json,csv,txt}, copied to docs/data/.
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
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--format", default=None, help="--browser: the edge's weight format (default: the page's, "
                    "the smallest); the results files get -FORMAT")
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


# 53 prompt tokens that the reference continues for 32 tokens without an EOS (the "Photosynthesis"
# prompt of the tests stops after 14)
PROMPT = ("Lighthouse keepers once logged every passing ship by hand, noting the weather, the hour and the "
          "colour of the sails; their ledgers, kept for two centuries along a rocky northern coast, now let "
          "historians trace storms, trade routes and even the arrival of steam.")
RUNS = [("server only", {"backend": "server"}), ("15 waiting", {"split": 15, "progressive": False}),
        ("15 progressive", {"split": 15, "progressive": True}), ("0 waiting", {"split": 0, "progressive": False}),
        ("0 progressive", {"split": 0, "progressive": True}), ("auto progressive", {"progressive": True})]


def ascii_plot(series, width=72, height=12, ylabel=""):
    """A text plot of [(name, [(t, y)])] (matplotlib is not installed here): one letter per series."""
    pts = [(t, y) for _, xs in series for t, y in xs]
    if not pts:
        return ""
    t1, y0, y1 = max(t for t, _ in pts) or 1.0, 0.0, max(y for _, y in pts) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for k, (_, xs) in enumerate(series):
        for t, y in xs:
            c = min(width - 1, int(t / t1 * (width - 1)))
            r = height - 1 - min(height - 1, int((y - y0) / (y1 - y0) * (height - 1)))
            grid[r][c] = "abcdefgh"[k]
    lines = [f"{(y1 - (y1 - y0) * r / (height - 1)):7.2f} |" + "".join(row) for r, row in enumerate(grid)]
    lines.append(" " * 8 + "+" + "-" * width)
    lines.append(" " * 8 + f"0 s{'':{width - 12}}{t1:7.1f} s")
    lines.append("        " + ylabel + "; " + ", ".join(f"{'abcdefgh'[k]} = {n}" for k, (n, _) in enumerate(series)))
    return "\n".join(lines)


def browser_main(a):
    sys.path.insert(0, str(ROOT / "tests"))
    from playwright.sync_api import sync_playwright

    from test_edge_harness import LiveServer, launch, open_page
    srv = LiveServer(models=(a.model,), preload=True)
    rows, steps, moves, text = [], [], [], []

    def say(line=""):
        print(line, flush=True)
        text.append(line)
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            for name, o in RUNS:
                page = open_page(b, srv.url)             # a fresh page: nothing on its GPU
                opts = {"model": a.model, "greedy": True, "maxNewTokens": a.tokens, **o,
                        **({"format": a.format} if a.format else {})}
                t0 = time.perf_counter()
                r = page.evaluate("([p, o]) => pyapp.generate(p, o)", [PROMPT, opts])
                wall = time.perf_counter() - t0
                page.close()
                s = r["stats"]
                ttft = s.get("time_to_first_token_with_load", s["time_to_first_token"])
                rows.append({"run": name, "ttft_s": ttft, "format": s.get("format"), "tokens": s["tokens"], "wall_s": round(wall, 2),
                             "tokens_per_second": s["tokens_per_second"], "load_s": s.get("load_seconds", 0),
                             "weight_bytes": s.get("weight_bytes", 0), "split": s.get("split"),
                             "split_trace": s.get("split_trace"), "handover_bytes": s.get("handover_bytes", 0),
                             "prompt_tokens": s.get("prompt_tokens"), "ids": r["ids"]})
                for i, st in enumerate(s.get("steps") or []):
                    k, edge_ms, server_ms, t = st
                    steps.append((name, i, round(t, 3), k, round(edge_ms, 1), round(server_ms, 1),
                                  round(1e3 / max(1e-3, edge_ms + server_ms), 3)))
                moves += [{"run": name, **mv} for mv in s.get("handover_moves") or []]
                say(f"{name:16s} first token {ttft:6.2f} s (load {rows[-1]['load_s']:5.1f} s)  "
                    f"{s['tokens']} tokens at {s['tokens_per_second']:5.2f} tok/s  wall {wall:5.1f} s  trace "
                    f"{[(x['token'], x['split']) for x in s.get('split_trace') or []]}")
            b.close()
    finally:
        srv.close()
    same = len({tuple(r["ids"]) for r in rows}) == 1
    say(f"\nids identical in every run: {same}")
    by = {r["run"]: r for r in rows}
    say("\n| target | waiting (load, then first token) | progressive | server only |")
    say("| --- | --- | --- | --- |")
    for k in ("15", "0"):
        w, pr = by[f"{k} waiting"], by[f"{k} progressive"]
        say(f"| {k} | {w['ttft_s']:.2f} s (load {w['load_s']:.1f} s) | {pr['ttft_s']:.2f} s (whole load "
            f"{pr['load_s']:.1f} s, trace {' '.join(str(x['split']) for x in pr['split_trace'])}) | "
            f"{by['server only']['ttft_s']:.2f} s |")
    # KV per layer and per position: each move's bytes over (layers moved x positions held)
    from pyapp.store import model_path
    cfg = json.loads((model_path(a.model) / "config.json").read_text())
    hkv = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    say(f"\nKV hand-overs (f32 K and V: 2 x {hkv} heads x {hd} x 4 B = {2 * hkv * hd * 4} B per layer "
        "per position, + a 32-byte header per layer frame):")
    say("| run | token | split from -> to | layers | positions | bytes | B per layer per position |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for mv in moves:
        nl = abs(mv["from"] - mv["to"])
        per = (mv["bytes"] - 32 * nl) / max(1, nl * mv["positions"])
        mv["bytes_per_layer_position"] = round(per, 1)
        say(f"| {mv['run']} | {mv['token']} | {mv['from']} -> {mv['to']} | {nl} | {mv['positions']} | "
            f"{mv['bytes']:,} | {per:.0f} |")
    prog = [n for n, _ in RUNS if n.endswith("progressive")]
    series = [(n, [(r[2], r[3]) for r in steps if r[0] == n]) for n in prog]
    say("\nsplit against time since the generation started (s, the head on the GPU):")
    say(ascii_plot(series, ylabel="split"))
    series = [(n, [(r[2], r[6]) for r in steps if r[0] == n]) for n in prog]
    say("\ntokens/s of each step (1000 / (edge + server ms)) against the same time:")
    say(ascii_plot(series, ylabel="tok/s"))
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    res = {"model": a.model, "format": a.format or rows[-1]["format"], "prompt": PROMPT, "tokens": a.tokens, "rows": rows, "moves": moves,
           "ids_identical": same, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    base = "progressive-browser" + (f"-{a.format}" if a.format else "")
    (out / f"{base}.json").write_text(json.dumps(res, indent=1))
    with open(out / f"{base}.csv", "w") as f:
        f.write("run,step,t_s,split,edge_ms,server_ms,tok_per_s\n")
        f.writelines(",".join(map(str, r)) + "\n" for r in steps)
    (out / f"{base}.txt").write_text("\n".join(text) + "\n")
    docs = ROOT / "docs/data"
    for ext in ("json", "csv", "txt"):
        (docs / f"{base}.{ext}").write_bytes((out / f"{base}.{ext}").read_bytes())
    print("wrote", out / f"{base}.{{json,csv,txt}}", "and copies in", docs)


if __name__ == "__main__":
    main()
