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
        self.key = ""
        self.ws = None
        self.position = 0
        self.crossings = 0          # awaits/calls into JS per session (FFI crossings)

    async def open(self):
        import js  # type: ignore[import-not-found]
        info = await fetch_json(absolute_url(self.base_url, "/v1/sessions"), {
            "method": "POST", "headers": {"content-type": "application/json"},
            "body": json.dumps({"model": self.model, "split": self.split})})
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
            # fire and forget (the server also expires idle sessions); the key is the capability
            js.fetch(f"{self.base_url}/v1/sessions/{self.id}",
                     to_js({"method": "DELETE", "headers": {"x-session-key": self.key}},
                           dict_converter=js.Object.fromEntries)).catch(lambda e: None)
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
    if cache is not None:
        cache.destroy()


def pack(seqs, max_rows):
    """Consecutive groups of ``seqs`` of at most ``max_rows`` tokens together (order kept)."""
    groups, cur, n = [], [], 0
    for s in seqs:
        if cur and n + len(s) > max_rows:
            groups.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += len(s)
    if cur:
        groups.append(cur)
    return groups


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

    async def embed(self, seqs):
        """Encoder models: the pooled, normalised embeddings of token sequences, packed into as
        few GPU steps as fit ``max_tokens`` rows, never padded (``segments``: each sequence
        attends and pools only within itself)."""
        out = []
        for group in pack(seqs, self.backend.max_tokens):
            lens = [len(s) for s in group]
            if self.server is None:
                kw = {"ids": [i for s in group for i in s]}
            else:
                kw = {"x": await self._server_hidden(group)}
            flat = await self.backend.forward_async(segments=lens, **kw)
            D = len(flat) // len(group)
            out += [[float(v) for v in flat[i * D:(i + 1) * D]] for i in range(len(group))]
        return out

    async def _server_hidden(self, group):
        """Layers [0, split) of each sequence on the server, packed into one JS Float32Array."""
        import js  # type: ignore[import-not-found]
        D = self.em.model.hidden
        packed = js.Float32Array.new(sum(len(s) for s in group) * D)
        row = 0
        for ids in group:
            await self.server.reset()
            packed.set(await self.server.forward(ids), row * D)
            row += len(ids)
        return packed

    def close(self):
        if self.server is not None:
            self.server.close()
        _free(self.cache)
        self.cache = None
        self.backend.destroy()
