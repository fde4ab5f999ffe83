"""Sessions stay pinned to their server behind a consistent-hash load balancer (docs/server.md,
"Several server processes"): two real `pyapp serve` processes started with --node/--ring, and a
small HTTP + WebSocket balancer in this process that routes /v1/sessions/<id>/… by the ring as
the docs state it (computed here, not with server/ring.py) and spreads creates round-robin."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from test_server_util import TINY_LLAMA, LiveServer, Serve, ids_bytes, tiny_store  # noqa: F401

ADMIN = {"authorization": "Bearer pin-admin"}
HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}


def ring_node(nodes: list[str], key: str) -> str:
    """docs/server.md's ring: 64 points sha256("<node>#<i>")[:8] (big-endian) per node; a key goes
    to the node of the first point >= sha256(key)[:8], wrapping around."""
    def h(s):
        return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")
    points = sorted((h(f"{n}#{i}"), n) for n in nodes for i in range(64))
    k = h(key)
    return next((n for v, n in points if v >= k), points[0][1])


class Balancer:
    """Routes by the session id in the path; anything else (creates) round-robin."""

    def __init__(self, upstreams: dict[str, str]):
        self.upstreams = upstreams
        self.ring = list(upstreams)
        self.rr = itertools.count()
        self.log: list[tuple[str, str, str]] = []   # (method, path, node)
        self.app = Starlette(routes=[WebSocketRoute("/v1/sessions/{sid}/ws", self.ws),
                                     Route("/{path:path}", self.http, methods=["GET", "POST", "DELETE"])])

    def node(self, path: str) -> str:
        m = re.match(r"/v1/sessions/([^/]+)", path)
        if m:
            return ring_node(self.ring, m.group(1))
        return self.ring[next(self.rr) % len(self.ring)]

    async def http(self, request):
        node = self.node(request.url.path)
        self.log.append((request.method, request.url.path, node))
        headers = {k: v for k, v in request.headers.items() if k not in HOP}
        try:
            async with httpx.AsyncClient(base_url=self.upstreams[node]) as c:
                r = await c.request(request.method, request.url.path, params=request.query_params,
                                    headers=headers, content=await request.body())
        except httpx.ConnectError:
            return JSONResponse({"error": {"message": f"node {node} is unreachable", "type": "bad_gateway",
                                           "param": None, "code": 502}}, status_code=502)
        return Response(r.content, r.status_code,
                        {k: v for k, v in r.headers.items() if k not in HOP | {"content-encoding"}})

    async def ws(self, ws):
        node = self.node(ws.url.path)
        self.log.append(("WS", ws.url.path, node))
        url = "ws" + self.upstreams[node][4:] + ws.url.path + ("?" + ws.url.query if ws.url.query else "")
        try:
            up = await connect(url)
        except (OSError, InvalidStatus):
            await ws.close(code=1011)    # before accept: the client's handshake is refused
            return
        await ws.accept()

        async def down():
            async for m in up:
                await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_text(m))
            await ws.close(code=up.close_code or 1000)

        pump = asyncio.ensure_future(down())
        try:
            while True:
                m = await ws.receive()
                if m["type"] == "websocket.disconnect":
                    break
                await up.send(m["bytes"] if m.get("bytes") is not None else m["text"])
        finally:
            pump.cancel()
            await up.close()


@pytest.fixture()
def cluster(tiny_store, tmp_path):
    nodes = {n: Serve(tiny_store, tmp_path, "--node", n, "--ring", "a,b", "--admin-token",
                      ADMIN["authorization"].split()[1], models=(TINY_LLAMA,)) for n in ("a", "b")}
    try:
        for s in nodes.values():
            s.wait()
        lb = Balancer({n: s.url for n, s in nodes.items()})
        with LiveServer(lb.app) as live:
            yield nodes, lb, live
    finally:
        for s in nodes.values():
            s.close()


def listed(srv: Serve) -> dict[str, int]:
    r = httpx.get(srv.url + "/v1/sessions", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {s["id"]: s["position"] for s in r.json()["data"]}


async def ws_step(live, s, ids) -> tuple[bytes, dict]:
    async with connect(live.ws_url + s["ws"]) as ws:
        await ws.send(ids_bytes(ids))
        out = await ws.recv()
        await ws.send('{"op": "info"}')
        return out, json.loads(await ws.recv())


def test_sessions_stay_on_their_server_and_fail_clearly_when_it_dies(cluster):
    nodes, lb, live = cluster
    c = httpx.Client(base_url=live.url, timeout=30)
    sess = []
    for _ in range(8):
        r = c.post("/v1/sessions", json={"model": TINY_LLAMA, "split": 2})
        assert r.status_code == 201, r.text
        s = r.json()
        created_on = lb.log[-1][2]
        # the creating server minted an id that the balancer's ring routes back to it
        assert ring_node(["a", "b"], s["id"]) == created_on == s["node"]
        sess.append(s)
    assert {s["node"] for s in sess} == {"a", "b"}

    for i, s in enumerate(sess):
        key = {"x-session-key": s["key"]}
        r = c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes([5 + i, 6, 7]),
                   headers={**key, "content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.headers["x-position"] == "3", r.text
        out, info = asyncio.run(ws_step(live, s, [9]))
        assert len(out) == 4 * s["hidden"] and info["position"] == 4, info
        assert c.get(f"/v1/sessions/{s['id']}", headers=key).json()["position"] == 4
    for s in sess:   # each lives on exactly its node, which saw every call on it
        assert listed(nodes[s["node"]]).get(s["id"]) == 4
        assert s["id"] not in listed(nodes["b" if s["node"] == "a" else "a"])
        assert {n for _, p, n in lb.log if s["id"] in p} == {s["node"]}

    # DELETE through the balancer ends it on its own server
    gone = [next(s for s in sess if s["node"] == n) for n in ("a", "b")]
    for s in gone:
        r = c.delete(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert s["id"] not in listed(nodes[s["node"]])
        assert c.get(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]}).status_code == 404
    live_a = [s for s in sess if s["node"] == "a" and s not in gone]
    live_b = [s for s in sess if s["node"] == "b" and s not in gone]

    # node b dies: its sessions fail clearly (502 naming it, WebSocket refused), a's keep working
    nodes["b"].close()
    for s in live_b:
        r = c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes([5]),
                   headers={"x-session-key": s["key"], "content-type": "application/octet-stream"})
        assert r.status_code == 502 and "node b" in r.json()["error"]["message"]
        with pytest.raises(InvalidStatus):
            asyncio.run(ws_step(live, s, [5]))
    for s in live_a:
        r = c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes([5]),
                   headers={"x-session-key": s["key"], "content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.headers["x-position"] == "5", r.text
        out, info = asyncio.run(ws_step(live, s, [6]))
        assert info["position"] == 6

    # the balancer drops b from its ring: b's ids now reach a, which says whose they were
    lb.ring = ["a"]
    for s in live_b:
        r = c.get(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]})
        assert r.status_code == 404
        assert "belongs to node 'b', this is node 'a'" in r.json()["error"]["message"]
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            asyncio.run(ws_step(live, s, [5]))
    for s in live_a:
        assert c.get(f"/v1/sessions/{s['id']}", headers={"x-session-key": s["key"]}).json()["position"] == 6
    r = c.post("/v1/sessions", json={"model": TINY_LLAMA, "split": 2})
    assert r.status_code == 201 and r.json()["node"] == "a"
    # the forward of a session made through the balancer equals one made on its node directly
    s = r.json()
    direct = httpx.post(nodes["a"].url + "/v1/sessions", json={"model": TINY_LLAMA, "split": 2}).json()
    octet = {"content-type": "application/octet-stream"}
    outs = [httpx.post(base + f"/v1/sessions/{x['id']}/forward", content=ids_bytes([11, 12]),
                       headers={**octet, "x-session-key": x["key"]}).content
            for base, x in ((live.url, s), (nodes["a"].url, direct))]
    assert np.array_equal(np.frombuffer(outs[0], "<f4"), np.frombuffer(outs[1], "<f4"))
