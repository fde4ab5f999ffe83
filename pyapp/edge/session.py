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


from .errors import EdgeError
from .jsfiles import load
from .stream import NET, absolute_url, fetch_json

# --------------------------------------------------------------------------- the WebSocket


def _ws(url):
    """A WebSocket (ws.js) whose open and every reply are bounded by NET["stall_s"]."""
    return load("ws")(url, NET["stall_s"] * 1000)


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
        info = await fetch_json(absolute_url(self.base_url, "/v1/sessions"), {
            "method": "POST", "headers": {"content-type": "application/json"},
            "body": json.dumps({"model": self.model, "split": self.split})})
        self.id = info["id"]
        self.ws = _ws(ws_url(self.base_url or str(js.location.href), info.get("ws") or f"/v1/sessions/{self.id}/ws"))
        await self.ws.opened
        return self

    async def forward(self, ids):
        """Hidden states of ``ids`` (a JS Float32Array proxy, [T*hidden]); never converted."""
        if self.ws is None or not self.ws.isOpen:
            await self.open()
            if self.position:
                raise EdgeError("the server session was lost mid-generation", "network")
        self.ws.sendIds(ids)
        msg = await self.ws.recv()
        self.crossings += 2
        data = getattr(msg, "data", None)
        if data is None:
            err = str(getattr(msg, "text", "")) or "no data"
            msg = None
            raise EdgeError(f"the server's layers failed: {_server_message(err)}", "server")
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
                raise EdgeError(f"the server could not reset the session: {_server_message(txt)}", "server")
        self.position = 0

    def close(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.id:
            import js  # type: ignore[import-not-found]
            from pyodide.ffi import to_js  # type: ignore[import-not-found]
            # fire and forget: the server also expires idle sessions
            js.fetch(f"{self.base_url}/v1/sessions/{self.id}",
                     to_js({"method": "DELETE"}, dict_converter=js.Object.fromEntries)).catch(lambda e: None)
            self.id = None


# --------------------------------------------------------------------------- split runner


def _server_message(text: str) -> str:
    """The message of the server's ``{"error": {"message": ...}}`` text frame, else the text."""
    try:
        err = json.loads(text).get("error")
        return str(err.get("message", err) if isinstance(err, dict) else err)
    except (ValueError, AttributeError):
        return text[:200]


def _free(cache):
    # GpuKVCache.destroy() comes with the gpu branch's fix of the KV-cache leak (issue 10)
    if cache is not None and hasattr(cache, "destroy"):
        cache.destroy()


class SplitRunner:
    """One model at one split: the GPU tail (layers [split, N) + head) and its server session."""

    def __init__(self, edge_model, split, backend, server):
        self.em = edge_model          # api.EdgeModel: manifest, Model, tokenizer
        self.split = split
        self.backend = backend        # GpuBackend for [split, N) (+ embed when split == 0)
        self.server = server          # ServerSession, or None at split 0
        self.cache = None
        self.weight_bytes = 0         # bytes streamed to build this runner

    async def reset(self, capacity):
        """A fresh generation: the server's cache rewound, a new GPU cache here."""
        if self.server is not None:
            await self.server.reset()
        _free(self.cache)
        self.cache = self.backend.new_cache(capacity, self.split, self.em.model.n_layers)

    async def step(self, ids, n, params):
        if self.server is None:
            return int(await self.backend.step_async(ids=list(ids), cache=self.cache, params=params, n=n))
        x = await self.server.forward(ids)
        return int(await self.backend.step_async(x=x, cache=self.cache, params=params, n=n))

    async def embed(self, ids):
        """Encoder models: the pooled, normalised embedding of one unpadded sequence."""
        if self.server is not None:
            await self.server.reset()
            kw = {"x": await self.server.forward(ids)}
            self.server.position = len(ids)       # the next embed resets it
        else:
            kw = {"ids": list(ids)}
        out = await self.backend.forward_async(**kw)
        vals = out.to_py() if hasattr(out, "to_py") else out    # hidden floats, not weights
        if len(vals) and isinstance(vals[0], (list, tuple)):
            vals = vals[0]
        return [float(v) for v in vals]

    def close(self):
        if self.server is not None:
            self.server.close()
        _free(self.cache)
        self.cache = None
        self.backend.destroy()
