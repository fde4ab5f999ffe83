"""Server benchmark: WebSocket forward-step latency at split 15, tokens/s with 1 and 16 concurrent
sessions, memory per session, and server-only /v1/completions throughput.

    python3 benchmarks/bench_server.py [--model smollm2-135m] [--split 15] [--steps 200]
                                       [--out bench-results/server.json]

The server runs as its own process (`python -m server.main --no-setup`), as in production, so the
client does not share its interpreter; numbers are loopback, numpy backend, OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ids_bytes(ids):
    return np.asarray(ids, dtype="<i4").tobytes()


def pct(xs, p):
    return float(np.percentile(np.asarray(xs), p))


async def open_session(c: httpx.AsyncClient, model: str, split: int) -> dict:
    r = await c.post("/v1/sessions", json={"model": model, "split": split})
    r.raise_for_status()
    return r.json()


async def end_session(c: httpx.AsyncClient, s: dict):
    (await c.delete(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})).raise_for_status()


async def session_loop(base, ws_base, model, split, prompt, steps, lat=None, keep=False):
    """A session's decode loop over its WebSocket (the ``ws`` URL carries the session key)."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        s = await open_session(c, model, split)
    async with connect(ws_base + s["ws"], max_size=None) as ws:
        await ws.send(ids_bytes(prompt))
        await ws.recv()
        t_start = time.perf_counter()
        tok = 1234
        for i in range(steps):
            t0 = time.perf_counter()
            await ws.send(ids_bytes([tok]))
            out = await ws.recv()
            if lat is not None:
                lat.append(time.perf_counter() - t0)
            tok = 100 + (i * 7919) % 40000
            assert len(out) == 4 * s["hidden"]
        dt = time.perf_counter() - t_start
    if not keep:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            await end_session(c, s)
    return s, dt


async def http_steps(base, model, split, prompt, steps):
    """The same decode loop over HTTP: POST /forward with the session's X-Session-Key."""
    lat = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        s = await open_session(c, model, split)
        hdr = {"x-session-key": s["key"], "content-type": "application/octet-stream"}
        r = await c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes(prompt), headers=hdr)
        r.raise_for_status()
        for i in range(steps):
            t0 = time.perf_counter()
            r = await c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes([100 + i]), headers=hdr)
            lat.append(time.perf_counter() - t0)
            r.raise_for_status()
            assert len(r.content) == 4 * s["hidden"]
        await end_session(c, s)
    return lat


async def bench(base, ws_base, model, split, steps, conc_steps, prompt_len):
    res = {}
    prompt = [int(x) for x in np.random.default_rng(0).integers(100, 40000, prompt_len)]
    # warm-up
    await session_loop(base, ws_base, model, split, prompt, 5)
    lat = []
    s, dt = await session_loop(base, ws_base, model, split, prompt, steps, lat)
    res["ws_step_latency_ms"] = {"split": split, "steps": steps, "prompt_tokens": prompt_len,
                                 "p50": round(pct(lat, 50) * 1e3, 3), "p90": round(pct(lat, 90) * 1e3, 3),
                                 "p99": round(pct(lat, 99) * 1e3, 3), "mean": round(float(np.mean(lat)) * 1e3, 3)}
    res["tokens_per_s"] = {"1_session": round(steps / dt, 2)}
    hl = await http_steps(base, model, split, prompt, steps // 2)
    res["http_step_latency_ms"] = {"split": split, "steps": steps // 2,
                                   "p50": round(pct(hl, 50) * 1e3, 3), "p99": round(pct(hl, 99) * 1e3, 3)}
    t0 = time.perf_counter()
    outs = await asyncio.gather(*[session_loop(base, ws_base, model, split, prompt, conc_steps)
                                  for _ in range(16)])
    wall = time.perf_counter() - t0
    per = [conc_steps / d for _, d in outs]
    res["tokens_per_s"]["16_sessions_total"] = round(16 * conc_steps / wall, 2)
    res["tokens_per_s"]["16_sessions_per_session_mean"] = round(float(np.mean(per)), 2)
    res["tokens_per_s"]["steps_per_session_concurrent"] = conc_steps
    return res


async def completions(base, model, n_conc, max_tokens):
    """Tokens/s of n_conc concurrent completions, each from its own loopback address (the server
    caps the requests in flight per client address)."""
    async def one(i):
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{2 + i}")
        async with httpx.AsyncClient(base_url=base, timeout=600, transport=transport) as c:
            r = await c.post("/v1/completions", json={"model": model, "prompt": f"Once upon a time {i}",
                                                      "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]
    await one(0)
    t0 = time.perf_counter()
    toks = await asyncio.gather(*[one(i) for i in range(n_conc)])
    return round(sum(toks) / (time.perf_counter() - t0), 2)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--split", type=int, default=15)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--conc-steps", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--completion-tokens", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench-results" / "server.json"))
    a = p.parse_args(argv)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    admin = {"authorization": "Bearer bench-admin"}   # to read the session table
    cmd = [sys.executable, "-m", "server.main", "--no-setup", "--model", a.model, "--port", str(port),
           "--max-context", str(a.context), "--log-level", "warning", "--admin-token", "bench-admin"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() - t0 > 300:
                raise SystemExit(f"server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        startup = time.time() - t0
        rss0 = rss_kb(proc.pid)
        res = asyncio.run(bench(base, ws_base, a.model, a.split, a.steps, a.conc_steps, a.prompt_len))
        # memory: accounted KV per session at the server's context, and measured RSS growth
        info = httpx.get(base + "/v1/models").json()["data"][0]
        rss_a = rss_kb(proc.pid)

        async def hold16():
            return await asyncio.gather(*[session_loop(base, ws_base, a.model, a.split,
                                                       [5] * a.prompt_len, 4, keep=True)
                                         for _ in range(16)])
        outs = asyncio.run(hold16())
        rss_b = rss_kb(proc.pid)
        stats = httpx.get(base + "/v1/sessions", headers=admin).json()
        res["memory"] = {
            "kv_bytes_per_session_accounted": outs[0][0]["bytes"],
            "context_tokens": outs[0][0]["context"],
            "split": a.split,
            "kv_bytes_per_token_per_session": outs[0][0]["bytes"] // outs[0][0]["context"],
            "rss_growth_per_session_kb_16_sessions_36_tokens": round((rss_b - rss_a) / 16, 1),
            "server_rss_mb_idle": round(rss0 / 1024, 1),
            "total_accounted_16_sessions": stats["bytes"],
        }
        for s, _ in outs:
            httpx.delete(f"{base}/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]}).raise_for_status()
        res["completions_tokens_per_s"] = {
            "1_request": asyncio.run(completions(base, a.model, 1, a.completion_tokens)),
            "16_concurrent_total": asyncio.run(completions(base, a.model, 16, a.completion_tokens // 2)),
        }
        res["setup"] = {"model": a.model, "n_layers": info["n_layers"], "backend": "numpy", "transport": "loopback",
                        "OMP_NUM_THREADS": 1, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                        "python": platform.python_version(), "numpy": np.__version__,
                        "server_startup_s": round(startup, 1),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
