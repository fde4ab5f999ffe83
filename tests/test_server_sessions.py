"""Split sessions over a real uvicorn: forward equals the numpy executor, WebSocket decode loops,
isolation of concurrent sessions, eviction, limits and errors."""
from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from test_server_util import (ADMIN, TINY_BERT, TINY_LLAMA, ids_bytes, start_server, tiny_server,  # noqa: F401
                              tiny_store)

OCTET = {"content-type": "application/octet-stream"}
KEYS: dict = {}   # session id -> its key, from the create responses


def K(sid):
    """The capability header a call on session ``sid`` must carry."""
    return {"x-session-key": KEYS.get(sid, "")}


@pytest.fixture(scope="module")
def ref(tiny_store):
    from pyapp.numpy_backend import NumpyBackend

    return NumpyBackend.load(tiny_store / TINY_LLAMA)


def open_session(srv, split, model=TINY_LLAMA, **kw):
    r = httpx.post(f"{srv.url}/v1/sessions", json={"model": model, "split": split, **kw})
    assert r.status_code == 201, r.text
    KEYS[r.json()["id"]] = r.json()["key"]
    return r.json()


def fwd(srv, sid, ids, **headers):
    return httpx.post(f"{srv.url}/v1/sessions/{sid}/forward", content=ids_bytes(ids),
                      headers={**OCTET, **K(sid), **headers})


def ref_hidden(ref, split, steps):
    cache = ref.new_cache(128, 0, split)
    return [ref.forward(ids=s, cache=cache, start=0, stop=split, head=False) for s in steps]


STEPS = [[5, 17, 33, 8, 90], [41], [7], [64, 3]]


@pytest.mark.parametrize("split", [1, 2, 3])
def test_forward_equals_numpy_http(tiny_server, ref, split):
    s = open_session(tiny_server, split)
    assert s["split"] == split and s["n_layers"] == 3 and s["hidden"] == 72
    assert s["ws"] == f"/v1/sessions/{s['id']}/ws?key={s['key']}"
    want = ref_hidden(ref, split, STEPS)
    pos = 0
    for step, w in zip(STEPS, want):
        r = fwd(tiny_server, s["id"], step)
        assert r.status_code == 200, r.text
        pos += len(step)
        assert r.headers["x-shape"] == f"{len(step)},72"
        assert r.headers["x-dtype"] == "f32" and r.headers["x-position"] == str(pos)
        got = np.frombuffer(r.content, "<f4").reshape(len(step), 72)
        assert np.array_equal(got, w)
    httpx.delete(f"{tiny_server.url}/v1/sessions/{s['id']}", headers=K(s["id"]))


def test_forward_f16_and_split0(tiny_server, ref):
    s = open_session(tiny_server, 2, dtype="f16")
    r = fwd(tiny_server, s["id"], STEPS[0])
    assert r.headers["x-dtype"] == "f16"
    got = np.frombuffer(r.content, "<f2").reshape(5, 72)
    assert np.array_equal(got, ref_hidden(ref, 2, STEPS[:1])[0].astype(np.float16))
    s0 = open_session(tiny_server, 0)
    assert s0["bytes"] == 0
    r = fwd(tiny_server, s0["id"], [1, 2, 3])
    assert r.status_code == 200 and r.content == b"" and r.headers["x-position"] == "3"
    assert r.headers["x-shape"] == "0,72"


def test_session_memory_accounted(tiny_server):
    s = open_session(tiny_server, 2)
    # K and V, 2 layers, 2 kv heads, 128 positions, head_dim 12, f32
    assert s["bytes"] == 2 * 2 * 2 * 128 * 12 * 4
    s2 = open_session(tiny_server, 2, context=16)
    assert s2["bytes"] == 2 * 2 * 2 * 16 * 12 * 4 and s2["context"] == 16
    listing = httpx.get(f"{tiny_server.url}/v1/sessions", headers=ADMIN).json()
    assert listing["bytes"] == sum(x["bytes"] for x in listing["data"])
    for x in (s, s2):
        assert httpx.delete(f"{tiny_server.url}/v1/sessions/{x['id']}", headers=K(x["id"])).status_code == 200


def test_reset_and_truncate_http(tiny_server, ref):
    s = open_session(tiny_server, 3)
    sid = s["id"]
    a = [fwd(tiny_server, sid, st).content for st in STEPS]
    r = httpx.post(f"{tiny_server.url}/v1/sessions/{sid}/truncate", json={"length": 5}, headers=K(sid))
    assert r.status_code == 200 and r.json()["position"] == 5
    assert [fwd(tiny_server, sid, st).content for st in STEPS[1:]] == a[1:]
    r = httpx.post(f"{tiny_server.url}/v1/sessions/{sid}/reset", headers=K(sid))
    assert r.json()["position"] == 0
    assert [fwd(tiny_server, sid, st).content for st in STEPS] == a
    assert httpx.get(f"{tiny_server.url}/v1/sessions/{sid}", headers=K(sid)).json()["position"] == 9


def test_expect_position_409_and_http_ordering(tiny_server, ref):
    s = open_session(tiny_server, 2)
    r = fwd(tiny_server, s["id"], [4], **{"x-expect-position": "3"})
    assert r.status_code == 409 and "error" in r.json()
    r = fwd(tiny_server, s["id"], [4], **{"x-expect-position": "0"})
    assert r.status_code == 200

    async def many():
        async with httpx.AsyncClient(base_url=tiny_server.url) as c:
            rs = await asyncio.gather(*[
                c.post(f"/v1/sessions/{s['id']}/forward", content=ids_bytes([9]), headers={**OCTET, **K(s["id"])})
                for _ in range(12)])
        return sorted(int(r.headers["x-position"]) for r in rs)

    assert asyncio.run(many()) == list(range(2, 14))


# --------------------------------------------------------------------------- WebSocket decode loop


def local_tail(tiny_store, split):
    from pyapp.numpy_backend import NumpyBackend

    return NumpyBackend.load(tiny_store / TINY_LLAMA, start=split, embed=False, head=True)


def ref_greedy(ref, prompt, n):
    from pyapp.decode import generate

    cache = ref.new_cache(128)
    res = generate(lambda ids, i: int(np.argmax(ref.forward(ids=ids, cache=cache)[-1])), prompt, n)
    return res.ids


async def ws_decode(srv, split, prompt, n, tail, model_hidden=72):
    s = await asyncio.to_thread(open_session, srv, split)
    cache = tail.new_cache(128, split, tail.model.n_layers)
    out = []
    async with connect(srv.ws_url + s["ws"], max_size=None) as ws:
        ids = prompt
        for _ in range(n):
            await ws.send(ids_bytes(ids))
            x = np.frombuffer(await ws.recv(), "<f4").reshape(len(ids), model_hidden)
            logits = tail.forward(x=x, cache=cache, start=split)
            tok = int(np.argmax(logits[-1]))
            out.append(tok)
            ids = [tok]
    async with httpx.AsyncClient() as c:
        await c.delete(f"{srv.url}/v1/sessions/{s['id']}", headers=K(s["id"]))
    return s["id"], out


def test_ws_decode_plus_local_tail_equals_numpy(tiny_server, tiny_store, ref):
    prompt = [5, 17, 33, 8]
    want = ref_greedy(ref, prompt, 12)
    for split in (1, 2, 3):
        _, got = asyncio.run(ws_decode(tiny_server, split, prompt, 12, local_tail(tiny_store, split)))
        assert got == want, split


def test_ws_ops_and_errors(tiny_server, ref):
    s = open_session(tiny_server, 2)

    async def go():
        async with connect(tiny_server.ws_url + s["ws"]) as ws:
            await ws.send(ids_bytes(STEPS[0]))
            a = await ws.recv()
            await ws.send(json.dumps({"op": "truncate", "length": 2}))
            assert json.loads(await ws.recv()) == {"ok": True, "op": "truncate", "position": 2}
            await ws.send(json.dumps({"op": "info"}))
            assert json.loads(await ws.recv())["position"] == 2
            await ws.send(json.dumps({"op": "reset"}))
            assert json.loads(await ws.recv())["position"] == 0
            await ws.send(ids_bytes(STEPS[0]))
            assert await ws.recv() == a
            # errors come back as JSON text frames and the socket keeps working
            for bad in (b"\x01\x02\x03", ids_bytes([101]), ids_bytes([-1]), b"",
                        json.dumps({"op": "truncate", "length": 99}), "not json",
                        json.dumps({"op": "jump"})):
                await ws.send(bad)
                e = json.loads(await ws.recv())
                assert "error" in e and e["error"]["code"] == 400, (bad, e)
            await ws.send(ids_bytes([7]))
            assert len(await ws.recv()) == 72 * 4
        try:
            async with connect(tiny_server.ws_url + "/v1/sessions/nope/ws") as ws:
                await ws.recv()
            raise AssertionError("connected to an unknown session")
        except Exception as e:  # rejected handshake or close
            assert "4404" in str(e) or "403" in str(e) or "HTTP" in str(e), e

    asyncio.run(go())


# --------------------------------------------------------------------------- isolation + eviction


def test_16_sessions_interleaved_equal_alone(tiny_server, tiny_store):
    rng = np.random.default_rng(0)
    prompts = [[int(x) for x in rng.integers(3, 100, size=int(rng.integers(1, 9)))] for _ in range(16)]
    splits = [1 + i % 3 for i in range(16)]
    tails = {sp: local_tail(tiny_store, sp) for sp in (1, 2, 3)}
    alone = [asyncio.run(ws_decode(tiny_server, sp, p, 10, tails[sp]))[1] for sp, p in zip(splits, prompts)]

    async def together():
        return await asyncio.gather(*[ws_decode(tiny_server, sp, p, 10, tails[sp])
                                      for sp, p in zip(splits, prompts)])

    got = asyncio.run(together())
    assert [g[1] for g in got] == alone


def test_idle_eviction_frees_memory(tiny_store):
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, preload=True,
                      limits={"session_ttl": 600, "evict_interval": 0.1}) as srv:
        ids = [open_session(srv, 3)["id"] for _ in range(16)]
        for sid in ids:
            assert fwd(srv, sid, [5, 6]).status_code == 200
        mgr = srv.state.sessions
        caches = [weakref.ref(mgr.sessions[sid].cache) for sid in ids]
        assert mgr.total_bytes == 16 * 2 * 3 * 2 * 128 * 12 * 4
        srv.state.limits.session_ttl = 0.3  # now let them go idle
        t0 = time.time()
        while mgr.sessions and time.time() - t0 < 10:
            time.sleep(0.1)
        assert not mgr.sessions and mgr.total_bytes == 0 and mgr.evicted == 16
        gc.collect()
        assert all(c() is None for c in caches)
        r = fwd(srv, ids[0], [1])
        assert r.status_code == 404 and "error" in r.json()
        assert httpx.get(f"{srv.url}/healthz").json()["bytes"] == 0


def test_busy_session_is_not_evicted(tiny_store):
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, preload=True,
                      limits={"session_ttl": 0.6, "evict_interval": 0.1}) as srv:
        sid = open_session(srv, 2)["id"]
        for _ in range(10):  # keep using it past the TTL
            assert fwd(srv, sid, [5]).status_code == 200
            time.sleep(0.2)
        assert sid in srv.state.sessions.sessions


def test_full_table_evicts_least_recently_used(tiny_store):
    """A full table (or KV budget) ends the least recently used idle session rather than refusing
    the newcomer; a per-client cap makes a client recycle its own sessions first."""
    with start_server([TINY_LLAMA], tiny_store, web_dir=None,
                      limits={"max_sessions": 3, "max_total_bytes": 200_000,
                              "max_session_bytes": 100_000}) as srv:
        a, b, c = open_session(srv, 1), open_session(srv, 1), open_session(srv, 0)
        assert fwd(srv, a["id"], [5]).status_code == 200      # a is now the most recently used
        d = open_session(srv, 1)                              # b (least recently used) makes room
        assert fwd(srv, b["id"], [5]).status_code == 404
        assert all(fwd(srv, x["id"], [5]).status_code == 200 for x in (a, c, d))
        # 3 layers x 128 positions = 73728 bytes each: two fit in 200 kB with a, d (24576 each)
        e = open_session(srv, 3)
        f = open_session(srv, 3)                              # over the budget: LRU ones go
        assert srv.state.sessions.total_bytes <= 200_000
        assert fwd(srv, f["id"], [5]).status_code == 200
        assert sum(fwd(srv, x["id"], [5]).status_code == 404 for x in (a, c, d, e)) >= 2
    with start_server([TINY_LLAMA], tiny_store, web_dir=None,
                      limits={"max_sessions_per_client": 2}) as srv:
        a, b = open_session(srv, 1), open_session(srv, 1)
        fwd(srv, a["id"], [5])
        open_session(srv, 1)                                  # this client's LRU (b) goes
        assert fwd(srv, b["id"], [5]).status_code == 404 and fwd(srv, a["id"], [6]).status_code == 200
    with start_server([TINY_LLAMA], tiny_store, web_dir=None,
                      limits={"max_session_bytes": 50_000}) as srv:
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 3})
        assert r.status_code == 400 and "context" in r.json()["error"]["message"]
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 3, "context": 64})
        assert r.status_code == 201


def test_all_sessions_busy_gives_429(tiny_store):
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, preload=True,
                      limits={"max_sessions": 1}) as srv:
        a = open_session(srv, 1)
        srv.state.sessions.sessions[a["id"]].busy += 1        # a call in flight: never evicted
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 1})
        assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
        srv.state.sessions.sessions[a["id"]].busy -= 1


# --------------------------------------------------------------------------- bad requests


def test_bad_session_requests(tiny_server, ref):
    u = tiny_server.url
    good = open_session(tiny_server, 2)
    want = ref_hidden(ref, 2, STEPS)
    i = 0

    def still_serving():
        nonlocal i
        if i < len(STEPS):
            r = fwd(tiny_server, good["id"], STEPS[i])
            assert np.array_equal(np.frombuffer(r.content, "<f4").reshape(-1, 72), want[i])
            i += 1

    cases = [
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": "nope", "split": 1}), 404),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": -1}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": 4}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": "2"}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": True}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": 1, "dtype": "f64"}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": 1, "bogus": 1}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": 1, "context": 10**6}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", content=b"x" * (65 << 10), headers={"content-type": "application/json"}), 413),
        (lambda: fwd(tiny_server, "nope", [1]), 404),
        (lambda: httpx.delete(f"{u}/v1/sessions/nope"), 404),
        (lambda: httpx.get(f"{u}/v1/sessions/nope"), 404),
        (lambda: httpx.post(f"{u}/v1/sessions/nope/reset"), 404),
        (lambda: fwd(tiny_server, good["id"], [101]), 400),
        (lambda: fwd(tiny_server, good["id"], [5, -3]), 400),
        (lambda: fwd(tiny_server, good["id"], []), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/forward", content=b"\x00" * 7, headers={**OCTET, **K(good["id"])}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/forward", content=b"\x00" * 8,
                            headers={**OCTET, **K(good["id"]), "x-dtype": "f32"}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/forward", json=[1, 2], headers=K(good["id"])), 415),
        (lambda: fwd(tiny_server, good["id"], [5] * 200), 413),          # over 4 * context bytes
        (lambda: fwd(tiny_server, good["id"], [5] * 127), 400),          # context overflow
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/truncate", json={"length": 1000}, headers=K(good["id"])), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/truncate", json={}, headers=K(good["id"])), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/truncate", json={"length": "1"}, headers=K(good["id"])), 400),
        (lambda: httpx.post(f"{u}/v1/sessions", content=b'{"model": "x", "split": 1}',
                            headers={"content-type": "text/plain"}), 415),
        (lambda: httpx.post(f"{u}/v1/sessions", json={"model": TINY_LLAMA, "split": 1, "dtype": []}), 400),
        (lambda: httpx.post(f"{u}/v1/sessions/{good['id']}/truncate", json={"length": None},
                            headers=K(good["id"])), 400),
        (lambda: httpx.get(f"{u}/v1/sessions/{good['id']}"), 403),                   # no key
        (lambda: httpx.get(f"{u}/v1/sessions/{good['id']}", headers={"x-session-key": "x"}), 403),
        (lambda: fwd(tiny_server, good["id"], [5], **{"x-session-key": KEYS[good["id"]][:-1]}), 403),
        (lambda: httpx.get(f"{u}/v1/sessions"), 401),                                # admin only
        (lambda: httpx.put(f"{u}/v1/sessions"), 405),
        (lambda: httpx.get(f"{u}/v1/completions"), 405),
        (lambda: httpx.get(f"{u}/v1/nothing"), 404),
    ]
    for call, status in cases:
        r = call()
        assert r.status_code == status, (r.status_code, r.text)
        body = r.json()
        assert "error" in body and body["error"]["message"], body
        still_serving()
    # the good session was never disturbed
    assert httpx.get(f"{u}/v1/sessions/{good['id']}", headers=K(good["id"])).json()["position"] == sum(map(len, STEPS))


def test_bearer_token_and_cors(tiny_store):
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, token="s3cret") as srv:
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 1})
        assert r.status_code == 401 and "error" in r.json()
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 1},
                       headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 1},
                       headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 201
        s = r.json()
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": TINY_LLAMA, "prompt": [5]})
        assert r.status_code == 401
        # static and model files stay open
        assert httpx.get(f"{srv.url}/v1/models").status_code == 200
        assert httpx.get(f"{srv.url}/models/{TINY_LLAMA}/manifest.json").status_code == 200
        assert "access-control-allow-origin" not in httpx.get(
            f"{srv.url}/v1/models", headers={"origin": "http://evil.example"}).headers

        async def go():
            with pytest.raises(Exception):
                async with connect(srv.ws_url + s["ws"]) as ws:
                    await ws.send(ids_bytes([5]))
                    await ws.recv()
            async with connect(srv.ws_url + s["ws"] + "&token=s3cret") as ws:
                await ws.send(ids_bytes([5]))
                assert len(await ws.recv()) == 72 * 4
            async with connect(srv.ws_url + s["ws"], additional_headers={"authorization": "Bearer s3cret"}) as ws:
                await ws.send(ids_bytes([6]))
                assert len(await ws.recv()) == 72 * 4

        asyncio.run(go())
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, cors_origins=["http://app.example"]) as srv:
        r = httpx.get(f"{srv.url}/v1/models", headers={"origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.options(f"{srv.url}/v1/sessions", headers={
            "origin": "http://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})
        assert r.status_code == 200


def test_openapi_document(tiny_server):
    d = httpx.get(f"{tiny_server.url}/openapi.json").json()
    assert d["openapi"].startswith("3.")
    for p in ("/v1/sessions", "/v1/sessions/{sid}/forward", "/v1/completions", "/v1/chat/completions",
              "/v1/embeddings", "/v1/models", "/models/{name}/manifest.json"):
        assert p in d["paths"], p


def test_slow_session_does_not_stall_others(tiny_store, ref):
    """Compute runs in worker threads: a session stuck in a 2 s forward leaves the rest served."""
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, preload=True) as srv:
        entry = srv.state.registry.get(TINY_LLAMA)
        real = entry.backend("f32")

        class Slow:
            def __getattr__(self, k):
                return getattr(real, k)

            def forward(self, ids=None, **kw):
                if ids is not None and int(ids[0]) == 99:
                    time.sleep(2.0)
                return real.forward(ids=ids, **kw)

        entry._backends["f32"] = Slow()
        slow, fast = open_session(srv, 2), open_session(srv, 2)

        async def go():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                t0 = time.perf_counter()
                slow_task = asyncio.ensure_future(c.post(f"/v1/sessions/{slow['id']}/forward",
                                                         content=ids_bytes([99, 5]), headers={**OCTET, **K(slow["id"])}))
                await asyncio.sleep(0.2)
                for step in STEPS:
                    r = await c.post(f"/v1/sessions/{fast['id']}/forward", content=ids_bytes(step), headers={**OCTET, **K(fast["id"])})
                    assert r.status_code == 200
                assert (await c.get("/healthz")).status_code == 200
                t_fast = time.perf_counter() - t0
                assert not slow_task.done()
                r = await slow_task
                assert r.status_code == 200
                return t_fast, time.perf_counter() - t0

        t_fast, t_slow = asyncio.run(go())
        assert t_fast < 1.5 and t_slow >= 2.0


def test_ending_a_session_closes_its_websocket(tiny_store):
    from websockets.exceptions import ConnectionClosed

    with start_server([TINY_LLAMA], tiny_store, web_dir=None, preload=True,
                      limits={"session_ttl": 600, "evict_interval": 0.1}) as srv:
        a, b = open_session(srv, 2), open_session(srv, 2)

        async def go():
            async with connect(srv.ws_url + a["ws"]) as wa, connect(srv.ws_url + b["ws"]) as wb:
                await wa.send(ids_bytes([5]))
                await wa.recv()
                async with httpx.AsyncClient() as c:
                    assert (await c.delete(f"{srv.url}/v1/sessions/{a['id']}", headers=K(a["id"]))).status_code == 200
                with pytest.raises(ConnectionClosed) as ei:
                    await asyncio.wait_for(wa.recv(), 5)
                assert ei.value.rcvd.code == 4404
                srv.state.limits.session_ttl = 0.2     # b goes idle -> evicted -> 4408
                with pytest.raises(ConnectionClosed) as ei:
                    await asyncio.wait_for(wb.recv(), 5)
                assert ei.value.rcvd.code == 4408

        asyncio.run(go())
        assert not srv.state.sessions.sessions
