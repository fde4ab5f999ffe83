"""Moving the split during a generation (issue 14, server half): a real uvicorn serving SmolLM2,
a Python client over a real WebSocket that runs layers [K, N) + head on an executor of its own
(wgpu-py on lavapipe, or numpy), and the KV of each moved layer handed over in PKV1 frames.

Expected ids come from transformers (torch greedy, its own KV cache) and from a run whose split
never moves; the prompt ids from the `tokenizers` package. Greedy ids must be identical.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from test_server_util import start_server

pytestmark = pytest.mark.real_model
SMOL = "smollm2-135m"
N = 30
CTX = 128
PROMPT = "Photosynthesis turns sunlight, water and carbon dioxide into"
NEW = 32


def _dir():
    from pathlib import Path

    from pyapp import store

    try:
        d = Path(store.model_path(SMOL))
    except store.ModelNotFound:
        pytest.skip(f"{SMOL} is not in the store")
    return d


@pytest.fixture(scope="module")
def server():
    _dir()
    # 8 MiB per session: SmolLM2 at context 128 fits every layer (5.9 MB), at 256 only 21
    with start_server([SMOL], web_dir=None, preload=True,
                      limits={"max_context": 256, "max_session_bytes": 8 << 20}) as srv:
        yield srv


@pytest.fixture(scope="module")
def prompt_ids():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(_dir() / "tokenizer.json")).encode(PROMPT).ids


@pytest.fixture(scope="module")
def torch_ids(prompt_ids):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from test_real_models import torch_greedy

    m = tf.AutoModelForCausalLM.from_pretrained(_dir(), dtype=torch.float32).eval()
    return torch_greedy(m, prompt_ids, NEW)


@pytest.fixture(scope="module")
def numpy_edge():
    from pyapp.numpy_backend import NumpyBackend

    return NumpyBackend.load(_dir())


@pytest.fixture(scope="module")
def gpu_edge():
    pytest.importorskip("wgpu")
    from pyapp.gpu.backend import GpuBackend

    return GpuBackend.load(_dir(), max_positions=CTX, max_tokens=32)


# --------------------------------------------------------------------------- the test's edge


class Edge:
    """Layers [split, N) + head on `be` (numpy or GPU), its KV cache for every layer."""

    def __init__(self, be):
        self.be = be
        self.gpu = be.name == "wgpu"
        self.cache = be.new_cache(CTX, 0, N)

    def step(self, ids, x, split):
        if self.gpu:
            return self.be.step(ids=None if x is not None else ids, x=x, cache=self.cache, start=split,
                                stop=N)
        logits = self.be.forward(ids=None if x is not None else ids, x=x, cache=self.cache,
                                 start=split, stop=N)
        return int(np.argmax(logits[-1]))

    def take(self, frame: bytes):
        from pyapp.kvwire import HEADER, parse_header

        h = parse_header(frame)
        k, v = (memoryview(frame)[HEADER.size + j * h.part_bytes:HEADER.size + (j + 1) * h.part_bytes]
                for j in (0, 1))
        if not self.gpu:   # the GPU cache takes the frame's bytes as they are
            shape = (h.n_kv_heads, h.positions, h.head_dim)
            k, v = (np.frombuffer(a, "<f4").reshape(shape) for a in (k, v))
        self.cache.write_layer(h.layer, h.p0, k, v)

    def frame(self, layer: int) -> bytes:
        from pyapp.kvwire import KVHeader

        m = self.be.model
        p0, k, v = self.cache.read_layer(layer)
        h = KVHeader(layer, p0, self.cache.length, m.n_kv_heads, m.head_dim)
        return h.pack() + bytes(memoryview(k).cast("B")) + bytes(memoryview(v).cast("B"))


async def _text(ws) -> dict:
    msg = await ws.recv()
    assert isinstance(msg, str), "expected a text frame"
    return json.loads(msg)


async def move(ws, edge: Edge, new: int) -> dict:
    """Move the split to `new` (one hand-over) and return the server's last reply."""
    await ws.send(json.dumps({"op": "move", "split": new, "holds": list(range(N))}))
    head = await _text(ws)
    assert "error" not in head, head
    if head["direction"] == "to_edge":
        for _ in range(head["frames"]):
            edge.take(await ws.recv())
        await ws.send(json.dumps({"op": "commit"}))
    else:
        for layer in head["layers"]:
            await ws.send(edge.frame(layer))
    done = await _text(ws)
    assert done.get("ok") and done["split"] == new, done
    return head


async def forward(ws, edge: Edge, ids, split) -> int:
    await ws.send(np.asarray(ids, "<i4").tobytes())
    out = await ws.recv()
    x = np.frombuffer(out, "<f4").reshape(len(ids), -1) if split else None
    return edge.step(ids, x, split)


def open_session(server, split) -> dict:
    r = httpx.post(f"{server.url}/v1/sessions", json={"model": SMOL, "split": split, "context": CTX})
    assert r.status_code == 201, r.text
    return r.json()


async def generate(server, edge: Edge, prompt, n, start, plan=lambda i, k: k, trace=None):
    """Greedy ids; before decode step i the split moves one layer at a time to plan(i, split)."""
    s = open_session(server, start)
    split, out = start, []
    async with connect(server.ws_url + s["ws"], max_size=None) as ws:
        tok = await forward(ws, edge, prompt, split)
        out.append(tok)
        for i in range(1, n):
            target = plan(i, split)
            while split != target:
                split += 1 if target > split else -1
                await move(ws, edge, split)
                if trace is not None:
                    trace.append((i, split))
            tok = await forward(ws, edge, [tok], split)
            out.append(tok)
    httpx.delete(f"{server.url}/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})
    return out


# --------------------------------------------------------------------------- tests


def test_progressive_30_to_0_on_gpu_equals_fixed_split_and_torch(server, gpu_edge, numpy_edge,
                                                                prompt_ids, torch_ids):
    trace = []
    got = asyncio.run(generate(server, Edge(gpu_edge), prompt_ids, NEW, N,
                               lambda i, k: max(0, N - i), trace))
    assert trace[0] == (1, 29) and trace[-1] == (30, 0) and len(trace) == 30
    fixed = asyncio.run(generate(server, Edge(numpy_edge), prompt_ids, NEW, 15))
    assert got == torch_ids
    assert fixed == torch_ids


def test_progressive_30_to_15_then_back_to_20_numpy(server, numpy_edge, prompt_ids, torch_ids):
    def plan(i, k):   # down one layer per step to 15, then (from token 20) back up to 20
        return min(20, 15 + (i - 19)) if i >= 20 else max(15, N - i)

    trace = []
    got = asyncio.run(generate(server, Edge(numpy_edge), prompt_ids, NEW, N, plan, trace))
    assert (20, 16) in trace and trace[-1] == (24, 20)
    assert got == torch_ids


def test_move_back_on_gpu_reads_its_kv(server, gpu_edge, prompt_ids, torch_ids):
    got = asyncio.run(generate(server, Edge(gpu_edge), prompt_ids, 12, 15,
                               lambda i, k: min(20, 15 + i // 2) if i >= 4 else k))
    assert got == torch_ids[:12]


def test_move_skipping_layers_or_over_memory_is_refused(server):
    async def run():
        s = open_session(server, N)
        async with connect(server.ws_url + s["ws"]) as ws:
            await ws.send(json.dumps({"op": "move", "split": 26, "holds": [29, 28]}))
            err = await _text(ws)
            assert err["error"]["code"] == 400
            assert "does not hold layer 27" in err["error"]["message"]
            assert "down to 28 only" in err["error"]["message"]
            await ws.send(json.dumps({"op": "info"}))
            assert (await _text(ws))["split"] == N
        # over the per-session memory: 21 layers fit at context 256, 22 do not
        r = httpx.post(f"{server.url}/v1/sessions", json={"model": SMOL, "split": 21, "context": 256})
        assert r.status_code == 201
        s2 = r.json()
        r = httpx.post(f"{server.url}/v1/sessions/{s2['id']}/split", json={"split": 22},
                       headers={"x-session-key": s2["key"]})
        assert r.status_code == 400 and "per-session limit" in r.json()["error"]["message"]
        r = httpx.post(f"{server.url}/v1/sessions/{s['id']}/split", json={"split": 10, "holds": [29]},
                       headers={"x-session-key": s["key"]})
        assert r.status_code == 400 and "does not hold layer" in r.json()["error"]["message"]

    asyncio.run(run())


def test_http_route_hands_kv_down_and_back_up(server, numpy_edge, prompt_ids, torch_ids):
    """Over HTTP: the frames of a move down, posted back as a move up, restore the server's KV."""
    from pyapp.kvwire import parse_header, read_header

    s = open_session(server, N)
    key = {"x-session-key": s["key"]}
    edge = Edge(numpy_edge)
    url = f"{server.url}/v1/sessions/{s['id']}"

    def fwd(ids, split):
        r = httpx.post(url + "/forward", content=np.asarray(ids, "<i4").tobytes(), timeout=60,
                       headers={"content-type": "application/octet-stream", **key})
        assert r.status_code == 200, r.text
        x = np.frombuffer(r.content, "<f4").reshape(len(ids), -1) if split else None
        return edge.step(ids, x, split)

    out = [fwd(prompt_ids, N)]
    r = httpx.post(url + "/split", json={"split": 27, "holds": [27, 28, 29]}, headers=key)
    assert r.status_code == 200 and r.headers["x-split"] == "27" and r.headers["x-layers"] == "29,28,27"
    frames, off = [], 0
    while off < len(r.content):
        n = read_header(r.content, off).frame_bytes
        frames.append(r.content[off:off + n])
        off += n
    pos = len(prompt_ids)
    assert [parse_header(f).layer for f in frames] == [29, 28, 27]
    assert all(len(f) == 32 + 2 * 3 * pos * 64 * 4 for f in frames)   # f32 K and V, 3 heads x 64
    for f in frames:
        edge.take(f)
    out.append(fwd([out[-1]], 27))
    # back up: the edge's KV of 27 and 28 (a cut body first: refused, the split stays)
    body = edge.frame(27) + edge.frame(28)
    hdr = {"content-type": "application/octet-stream", "x-split": "29", **key}
    r = httpx.post(url + "/split", content=body[:-10], headers=hdr)
    assert r.status_code == 400 and "bytes; its header says" in r.json()["error"]["message"]
    assert httpx.get(url, headers=key).json()["split"] == 27
    r = httpx.post(url + "/split", content=body, headers=hdr)
    assert r.status_code == 200 and r.json()["split"] == 29, r.text
    for _ in range(4):
        out.append(fwd([out[-1]], 29))
    assert out == torch_ids[:6]


def test_dropped_socket_mid_handover_keeps_old_split_and_retry_gives_same_ids(
        server, numpy_edge, prompt_ids, torch_ids):
    """The client's socket closes after the first of two frames (to the edge), and after one of
    two frames (to the server): the session stays at its old split with its KV, a new socket
    retries the move, and the ids stay torch's."""
    async def run():
        s = open_session(server, N)
        edge = Edge(numpy_edge)
        url = server.ws_url + s["ws"]
        async with connect(url) as ws:
            out = [await forward(ws, edge, prompt_ids, N)]
            out.append(await forward(ws, edge, [out[-1]], N))
            await ws.send(json.dumps({"op": "move", "split": 28, "holds": list(range(N))}))
            head = await _text(ws)
            assert head["frames"] == 2
            await ws.recv()          # the first frame only; then the socket is cut
        async with connect(url) as ws:
            await ws.send(json.dumps({"op": "info"}))
            info = await _text(ws)
            assert info["split"] == N and info["position"] == len(prompt_ids) + 1
            # a forward at the old split still works and matches: the server kept every layer
            out.append(await forward(ws, edge, [out[-1]], N))
            await move(ws, edge, 28)   # the retried hand-over
            out.append(await forward(ws, edge, [out[-1]], 28))
            await ws.send(json.dumps({"op": "move", "split": 30}))
            head = await _text(ws)
            assert head["direction"] == "to_server" and head["layers"] == [28, 29]
            await ws.send(edge.frame(28))   # one of two, then cut
        async with connect(url) as ws:
            await ws.send(json.dumps({"op": "info"}))
            assert (await _text(ws))["split"] == 28
            out.append(await forward(ws, edge, [out[-1]], 28))
            await move(ws, edge, 30)
            out.append(await forward(ws, edge, [out[-1]], 30))
            # a forward while a move waits for its commit is refused, and cancel keeps the split
            await ws.send(json.dumps({"op": "move", "split": 29, "holds": [29]}))
            head = await _text(ws)
            await ws.recv()
            await ws.send(np.asarray([out[-1]], "<i4").tobytes())
            err = await _text(ws)
            assert err["error"]["code"] == 409 and "moving from 30 to 29" in err["error"]["message"]
            await ws.send(json.dumps({"op": "cancel"}))
            assert (await _text(ws))["split"] == 30
            out.append(await forward(ws, edge, [out[-1]], 30))
        return out

    assert asyncio.run(run()) == torch_ids[:7]


def test_load_report_follows_a_slowed_server(server, numpy_edge, prompt_ids, torch_ids):
    """`load` in the session info (create, WebSocket `info`) and /healthz: the median ms per layer
    of recent one-token steps. With the test hook each step sleeps 20 ms per layer for real: the
    report rises to at least that, the client's own round trip shows it too, and the ids stay
    torch's."""
    import time

    from server import sessions

    s = open_session(server, 10)
    assert set(s["load"]) == {"busy_sessions", "waiting", "workers", "steps", "ms_per_layer", "wait_ms"}
    assert s["load"]["workers"] >= 1 and s["load"]["waiting"] == 0

    async def run():
        edge = Edge(numpy_edge)
        async with connect(server.ws_url + s["ws"]) as ws:
            out = [await forward(ws, edge, prompt_ids, 10)]
            sessions.TEST["delay_ms_per_layer"] = 20
            try:
                rtt = []
                for _ in range(16):     # fills the window: every step in it is a slowed one
                    t0 = time.perf_counter()
                    out.append(await forward(ws, edge, [out[-1]], 10))
                    rtt.append((time.perf_counter() - t0) * 1e3)
            finally:
                sessions.TEST["delay_ms_per_layer"] = 0
            await ws.send(json.dumps({"op": "info"}))
            info = await _text(ws)
        return out, rtt, info

    out, rtt, info = asyncio.run(run())
    assert out == torch_ids[:17]
    load = info["load"]
    assert load["steps"] == 16 and load["ms_per_layer"] >= 20 and load["wait_ms"] >= 0, load
    assert min(rtt) >= 200, rtt       # 10 layers x 20 ms, seen by the client too
    assert load["busy_sessions"] == 0  # nobody computes while the info is asked
    health = httpx.get(server.url + "/healthz").json()
    assert health["load"]["ms_per_layer"] >= 20
    httpx.delete(f"{server.url}/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})
