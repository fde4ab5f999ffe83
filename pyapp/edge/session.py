"""Split generation: the server runs layers [0, K) over a WebSocket, the edge runs [K, N) + head.

Per decode step the edge sends the new token ids (int32, binary) and gets the hidden states of
those tokens back (f32 [T, hidden], binary).  The hidden states stay a JS ``Float32Array`` and
go straight to the GPU backend (``step_async(x=...)``), which samples on the GPU and returns
one int.  Both KV caches advance by the same T tokens per step, so they stay in step; a new
generation resets both (``{"op": "reset"}`` to the server, a fresh cache here).

Split 0: no server compute at all (the edge embeds).  Split N: the server runs every layer and
the edge only the final norm and head.

The decode loop is :func:`pyapp.decode.generate_async`, the async twin of ``generate``.
"""
from __future__ import annotations

import json


# --------------------------------------------------------------------------- the WebSocket

JS_WS = r"""
((url) => {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const queue = [], waiters = [];
  let closed = null;
  const deliver = (m) => { const w = waiters.shift(); if (w) w.resolve(m); else queue.push(m); };
  ws.onmessage = (e) => deliver(typeof e.data === 'string' ? { text: e.data } : { data: new Float32Array(e.data) });
  ws.onclose = (e) => { closed = `closed (${e.code}${e.reason ? ': ' + e.reason : ''})`;
                        while (waiters.length) waiters.shift().reject(new Error('WebSocket ' + closed)); };
  const opened = new Promise((res, rej) => { ws.onopen = () => res(true); ws.onerror = () => rej(new Error('WebSocket error on ' + url)); });
  return {
    opened,
    sendIds(ids) { if (closed) throw new Error('WebSocket ' + closed); ws.send(Int32Array.from(ids)); },
    sendText(s) { if (closed) throw new Error('WebSocket ' + closed); ws.send(s); },
    recv() { if (queue.length) return Promise.resolve(queue.shift());
             if (closed) return Promise.reject(new Error('WebSocket ' + closed));
             return new Promise((resolve, reject) => waiters.push({ resolve, reject })); },
    close() { try { ws.close(); } catch (e) {} },
    get isOpen() { return !closed && ws.readyState === 1; },
  };
})
"""

_ws_factory = None


def _ws(url):
    global _ws_factory
    if _ws_factory is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        _ws_factory = run_js(JS_WS)
    return _ws_factory(url)


def ws_url(base_url, path):
    import js  # type: ignore[import-not-found]
    if "://" in path:
        u = path
    else:
        u = str(js.URL.new(path, base_url or js.location.href).href)
    return "ws" + u[4:] if u.startswith("http") else u


class ServerSession:
    """Layers [0, split) on the server, one per generation stream (WebSocket)."""

    def __init__(self, model, split, base_url=""):
        self.model = model
        self.split = split
        self.base_url = base_url
        self.id = None
        self.ws = None
        self.position = 0
        self.crossings = 0          # awaits/calls into JS per session (FFI crossings)

    async def open(self):
        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        body = json.dumps({"model": self.model, "split": self.split})
        init = to_js({"method": "POST", "headers": {"content-type": "application/json"}, "body": body},
                     dict_converter=js.Object.fromEntries)
        resp = await js.fetch(self.base_url + "/v1/sessions", init)
        text = str(await resp.text())
        if not resp.ok:
            raise RuntimeError(f"POST /v1/sessions: HTTP {resp.status}: {text[:300]}")
        info = json.loads(text)
        self.id = info["id"]
        self.key = info.get("key", "")   # the session's capability; info["ws"] already carries it
        self.ws = _ws(ws_url(self.base_url or str(js.location.href), info.get("ws") or f"/v1/sessions/{self.id}/ws"))
        await self.ws.opened
        return self

    async def forward(self, ids):
        """Hidden states of ``ids`` (a JS Float32Array proxy, [T*hidden]); never converted."""
        if self.ws is None or not self.ws.isOpen:
            await self.open()
            if self.position:
                raise RuntimeError("the server session was lost mid-generation")
        self.ws.sendIds(ids)
        msg = await self.ws.recv()
        self.crossings += 2
        data = getattr(msg, "data", None)
        if data is None:
            err = str(getattr(msg, "text", "")) or "no data"
            msg = None
            raise RuntimeError(f"server: {err}")
        msg = None
        self.position += len(ids)
        return data

    async def reset(self):
        if self.ws is not None and self.ws.isOpen and self.position:
            self.ws.sendText(json.dumps({"op": "reset"}))
            msg = await self.ws.recv()       # the server acknowledges with a JSON text frame
            txt = str(getattr(msg, "text", "") or "")
            msg = None
            if txt and '"error"' in txt:
                raise RuntimeError(f"server reset: {txt[:200]}")
        self.position = 0

    def close(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None
            self.ws = None
        if self.id:
            try:
                import js  # type: ignore[import-not-found]
                from pyodide.ffi import to_js  # type: ignore[import-not-found]
                js.fetch(f"{self.base_url}/v1/sessions/{self.id}",
                         to_js({"method": "DELETE", "headers": {"x-session-key": self.key}},
                               dict_converter=js.Object.fromEntries))
            except Exception:  # noqa: BLE001
                pass
            self.id = None


# --------------------------------------------------------------------------- split runner


class SplitRunner:
    """One model at one split: the GPU tail (layers [split, N) + head) and its server session."""

    def __init__(self, edge_model, split, backend, server):
        self.em = edge_model          # api.EdgeModel: manifest, Model, tokenizer
        self.split = split
        self.backend = backend        # GpuBackend for [split, N) (+ embed when split == 0)
        self.server = server          # ServerSession, or None at split 0
        self.cache = None
        self.ffi_calls = 0

    def _new_cache(self, capacity):
        be = self.backend
        n = self.em.model.n_layers
        try:
            return be.new_cache(capacity, self.split, n)
        except TypeError:
            return be.new_cache(capacity)

    async def reset(self, capacity):
        if self.server is not None:
            await self.server.reset()
        old = self.cache
        if old is not None and hasattr(old, "destroy"):
            try:
                old.destroy()
            except Exception:  # noqa: BLE001
                pass
        self.cache = self._new_cache(capacity)

    async def step(self, ids, n, params):
        if self.server is None:
            tok = await self.backend.step_async(ids=list(ids), cache=self.cache, params=params, n=n)
            self.ffi_calls += 1
            return int(tok)
        x = await self.server.forward(ids)
        try:
            tok = await self.backend.step_async(x=x, cache=self.cache, params=params, n=n)
        finally:
            x = None
        self.ffi_calls += 3
        return int(tok)

    async def embed(self, ids):
        """Encoder models: the pooled, normalised embedding of one text (a list of floats)."""
        be = self.backend
        cache = self._new_cache(len(ids)) if self.em.model.causal else None
        if self.server is not None:
            await self.server.reset()
            x = await self.server.forward(ids)
            self.server.position = 0
            kw = {"x": x}
        else:
            x = None
            kw = {"ids": list(ids)}
        try:
            fwd = getattr(be, "forward_async", None) or getattr(be, "embed_async", None)
            out = await fwd(cache=cache, **kw) if fwd is not None else await _embed_via_plan(be, cache, **kw)
        finally:
            if x is not None:
                x = None
        if hasattr(out, "to_py"):           # a small Float32Array: the embedding, not weights
            vals = list(out.to_py())
            out = None
        else:
            vals = list(out)
        if vals and isinstance(vals[0], (list, tuple)):
            vals = vals[0]
        return [float(v) for v in vals]

    def close(self):
        if self.server is not None:
            self.server.close()


async def _embed_via_plan(be, cache, ids=None, x=None):
    """Encoder forward on a GpuBackend without forward_async: its recorded plan, one submit,
    then the pooled embedding (hidden floats, not weights) read back."""
    import struct
    m = be.model
    rec, T, pos0, head, writes = be._prepare(ids, x, cache, None, None, True, False, False)
    be.device.submit(rec, writes)
    emb = next(o for o in m.head if o.kind == "l2_normalize").outs[0]
    raw = await be.device.read_async(be.acts[emb], 0, m.hidden * 4)
    if hasattr(raw, "to_py"):
        raw = raw.to_py()
    raw = bytes(raw)
    return list(struct.unpack(f"<{m.hidden}f", raw[:m.hidden * 4]))
