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
import time

from ..decode import generate_async, generate_pipelined_async
from .errors import EdgeError
from .jsfiles import load
from .split import EVAL_EVERY, layer_costs, rebalance
from .stream import NET, absolute_url, fetch_json

# Steps in flight in pipelined decode: in the browser each token's mapAsync resolves only at the
# next event-loop turn, so several wait together (H200, Deno, run 12c: SmolLM2 f16 61 tok/s step
# by step, 199 at depth 4, 240 at 8; Gemma 3 270M 55 / 188 / 215; run 14a, the 7B shape: 135 /
# 164 / 191 at 8 / 16 / 32). By time, not a fixed count (decode.InFlight): about
# PIPELINE_AHEAD_S of steps, at most PIPELINE_DEPTH, so a slow adapter (SwiftShader, seconds a
# step) keeps 2 and a stop token throws away at most ~PIPELINE_AHEAD_S of work.
PIPELINE_DEPTH = 32
PIPELINE_AHEAD_S = 0.16

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

    def __init__(self, model, split, base_url="", weights=None):
        self.model = model
        self.split = split
        self.weights = weights      # the weight file the server's layers run (None: its default)
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
            "body": json.dumps({"model": self.model, "split": self.split,
                                **({"weights": self.weights} if self.weights else {})})})
        self.id = info["id"]
        self.key = info.get("key", "")   # the session's capability; info["ws"] already carries it
        self.url = ws_url(self.base_url or str(js.location.href), info.get("ws") or f"/v1/sessions/{self.id}/ws")
        self.ws = _ws(self.url)
        await self.ws.opened
        return self

    async def reconnect(self):
        """A new socket to the same session (its KV kept by the server), after a drop."""
        if self.ws is not None:
            self.ws.close()
        self.ws = _ws(self.url)
        await self.ws.opened

    async def control(self, msg: dict) -> dict:
        """Send a JSON op and return the server's JSON reply; its error frame raises."""
        self.ws.sendText(json.dumps(msg))
        return await self.recv_json()

    async def recv_json(self) -> dict:
        m = await self.ws.recv()
        txt = str(getattr(m, "text", "") or "")
        m = None
        if not txt:
            raise EdgeError("the server sent binary data where a JSON reply was expected", "server")
        d = json.loads(txt)
        if "error" in d:
            raise EdgeError(f"the server refused: {_server_message(txt)}", "server")
        return d

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
        return int(await self.backend.step_async(x=x, cache=self.cache, params=params, n=n, start=self.split))

    def pipelined(self):
        """Every layer and the sampler on this GPU (split 0, no server): decode may run steps
        ahead of the token reads (GpuBackend.pipeline)."""
        return self.server is None and self.split == 0

    async def generate(self, prompt_ids, max_new, params, eos_ids, on_token, should_stop, pipeline=True):
        """One generation on the cache reset() made: pipelined when pipelined() and
        `pipeline`, else the step loop (one token read before the next step is submitted)."""
        if pipeline and self.pipelined():
            return await generate_pipelined_async(self.backend.pipeline(self.cache, params, PIPELINE_DEPTH),
                                                  prompt_ids, max_new, eos_ids, on_token, should_stop,
                                                  PIPELINE_DEPTH, PIPELINE_AHEAD_S)
        return await generate_async(lambda ids, k: self.step(ids, k, params), prompt_ids, max_new,
                                    eos_ids, on_token, should_stop)

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
            flat = await self.backend.forward_async(segments=lens, start=self.split, **kw)
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


# --------------------------------------------------------------------------- progressive offload

# Test hooks (set from the page: ``pyapp.runPython``): "edge_slow_from" = a token index from which
# the re-evaluation reports the edge as slow; "drop_in_handover" = how many coming hand-overs
# close the socket after the server's handover header (the move is then retried once).
TEST = {"edge_slow_from": None, "drop_in_handover": 0}


class ProgressiveRunner:
    """Target split ``target``: the server session starts at N (every layer there, the head
    here); as ``backend.mark_ready(j)`` lands (weights streamed and verified), the split moves
    down between two steps, with the KV of the moved layers handed over (docs/server.md,
    "Moving the split"), until it reaches the target.  With ``auto`` the target is re-evaluated
    every EVAL_EVERY tokens (split.rebalance): up when the edge is too slow, down (``grow``
    streams the extra layers) when the server is.  ``trace`` is [{token, split}]."""

    def __init__(self, edge_model, target, backend, server, auto=False, grow=None, lowest=None):
        self.em = edge_model
        self.n = edge_model.model.n_layers
        self.target = target         # lowered by the 'auto' policy when the server is the slower
        self.floor = target          # lowest split allowed now (raised when the edge is slow)
        self.auto = auto
        self.grow = grow             # (new target) -> task streaming layers [new, target) (api)
        self.growing = []            # those tasks
        self.lowest = target if lowest is None else lowest   # lowest split the memory budget allows
        self.up_floor = 0            # after a move up the split never goes below it again
        self.load = None             # the server's last load report (session info)
        self.decisions = []          # [{token, from, to, why}]: the policy's moves
        self.layer_bytes, _, self.head_bytes, _ = layer_costs(edge_model.manifest)
        self.backend = backend       # built for [target, N) + head, track_ready() on
        self.server = server         # a session opened at split N
        self.split = self.n
        self.cache = None
        self.trace = []
        self.moves = []              # [{token, from, to, positions, bytes}] per hand-over
        self.tokens = 0
        self.handover_bytes = 0
        self.retries = 0
        self.times = []              # (split, edge ms, server ms, s since reset at the step's end) per step
        self.t_reset = 0.0
        self.on_move = None          # (token, split) -> None, for the page

    async def reset(self, capacity):
        await self.server.reset()
        _free(self.cache)
        self.cache = self.backend.new_cache(capacity, self.n, self.n)   # layers come by hand-over
        self.trace = [{"token": 0, "split": self.split}]
        self.tokens = 0
        self.t_reset = time.perf_counter()

    async def step(self, ids, n, params):
        await self._rebalance()
        t0 = time.perf_counter()
        x = await self.server.forward(ids)     # at split 0 it only advances the server's position
        t1 = time.perf_counter()
        if self.split == 0:
            x = None
            tok = await self.backend.step_async(ids=list(ids), cache=self.cache, params=params, n=n, start=0)
        else:
            tok = await self.backend.step_async(x=x, cache=self.cache, params=params, n=n, start=self.split)
        x = None
        t2 = time.perf_counter()
        self.times.append((self.split, (t2 - t1) * 1e3, (t1 - t0) * 1e3, t2 - self.t_reset))
        self.tokens += 1
        return int(tok)

    # -------------------------------------------------------------- where the split goes next
    async def _rebalance(self):
        if self.tokens == 0:
            return
        new = await self._evaluate()
        if new > self.split:
            self.floor = self.up_floor = new
            await self.move(new)
            return
        if new < self.target:        # lowered: stream layers [new, target); the split follows
            self.growing.append(self.grow(new))
            self.target = self.floor = new
        ready = self.backend.runnable_from()
        low = max(self.floor, ready if ready is not None else self.n)
        if low < self.split:
            await self.move(low)

    async def _evaluate(self) -> int:
        """The split the policy wants now (split.rebalance, every EVAL_EVERY tokens, 'auto' only)."""
        if self.tokens % EVAL_EVERY:
            return self.split
        hook = TEST["edge_slow_from"]
        if hook is not None:
            slow = self.split < self.n and self.tokens >= hook
            return min(self.n, self.split + max(1, (self.n - self.split) // 2)) if slow else self.split
        if not self.auto:
            return self.split          # an explicit split is honoured
        last = [(t[1], t[2]) for t in self.times[-EVAL_EVERY:] if t[0] == self.split]
        if len(last) < EVAL_EVERY:
            return self.split          # a full window at this split first
        self.load = (await self.server.control({"op": "info"})).get("load")
        # down only once the last lowering has landed, while layers can be streamed
        can_grow = self.grow is not None and self.split == self.target
        new, why = rebalance(self.split, self.n, last, self.layer_bytes, self.head_bytes,
                             (self.load or {}).get("ms_per_layer"), max(self.lowest, self.up_floor), can_grow)
        if new != self.split:
            self.decisions.append({"token": self.tokens, "from": self.split, "to": new, "why": why})
        return new

    # -------------------------------------------------------------- the hand-over
    async def move(self, new: int):
        """Move the split to ``new`` with the KV of the layers in between; a socket that drops
        mid-move is reopened and the move retried once (the server kept its old split)."""
        old, sent = self.split, self.handover_bytes
        try:
            await self._move_once(new)
        except Exception as e:  # noqa: BLE001 - a dropped socket surfaces as a JS Error
            if self.server.ws is not None and self.server.ws.isOpen:
                raise
            self.retries += 1
            await self.server.reconnect()
            info = await self.server.control({"op": "info"})
            landed = int(info.get("split", -1))
            if landed == new and new > self.split:     # the frames all arrived before the drop
                self._drop_moved_up(new)
            elif landed != self.split:
                raise EdgeError(f"the connection dropped during the hand-over from split {self.split} to "
                                f"{new} and the server is now at split {info.get('split')}", "network") from e
            try:
                if landed != new:
                    await self._move_once(new)
            except Exception as e2:  # noqa: BLE001
                raise EdgeError(f"the connection dropped twice during the hand-over from split "
                                f"{self.split} to {new}: {e2}", "network") from e2
        self.split = new
        self.trace.append({"token": self.tokens, "split": new})
        self.moves.append({"token": self.tokens, "from": old, "to": new, "positions": self.cache.length,
                           "bytes": self.handover_bytes - sent})
        if self.on_move is not None:
            self.on_move(self.tokens, new)

    async def _move_once(self, new: int):
        ready = sorted(i for i in range(self.target, self.n) if self.backend.ready and i in self.backend.ready)
        head = await self.server.control({"op": "move", "split": new, "holds": ready,
                                          "position": self.cache.length})
        if TEST["drop_in_handover"] > 0:
            TEST["drop_in_handover"] -= 1
            self.server.ws.close()
        if head["direction"] == "to_edge":
            await self._take_frames(head)
            done = await self.server.control({"op": "commit"})
        else:
            await self._give_frames(head["layers"])
            done = await self.server.recv_json()
        if int(done.get("split", -1)) != new:
            raise EdgeError(f"the server ended the hand-over at split {done.get('split')}, not {new}", "server")
        self.handover_bytes += int(head.get("bytes", 0))
        self._drop_moved_up(new)

    def _drop_moved_up(self, new: int):
        """Layers [split, new) went back to the server: their KV here goes."""
        for i in range(self.split, new):
            self.cache.drop_layer(i)

    async def _take_frames(self, head):
        import js  # type: ignore[import-not-found]

        from ..kvwire import HEADER, read_header
        for _ in range(int(head["frames"])):
            msg = await self.server.ws.recv()
            f32 = getattr(msg, "data", None)
            msg = None
            if f32 is None:
                raise EdgeError("the server sent text where a KV frame was expected", "server")
            h = read_header(f32.subarray(0, HEADER.size // 4).to_bytes())   # only the header crosses
            if int(f32.byteLength) != h.frame_bytes or h.dtype != "f32":
                raise EdgeError(f"KV frame of layer {h.layer} is {int(f32.byteLength)} bytes of {h.dtype}; "
                                f"expected {h.frame_bytes} of f32", "server")
            if h.layer not in self.cache.k:
                self.cache.add_layer(h.layer)
            # byte views (the cache's writes slice in bytes; a Float32Array's subarray counts floats)
            b0, q = int(f32.byteOffset) + HEADER.size, h.part_bytes
            self.cache.write_layer(h.layer, h.p0, js.Uint8Array.new(f32.buffer, b0, q),
                                   js.Uint8Array.new(f32.buffer, b0 + q, q))
            f32 = None

    async def _give_frames(self, layers):
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        from ..kvwire import KVHeader
        m = self.em.model
        for i in layers:
            p0, k, v = await self.cache.read_layer_async(i)
            frame = KVHeader(i, p0, self.cache.length, m.n_kv_heads, m.head_dim).pack() + k + v
            self.server.ws.sendBytes(to_js(frame))
            self.handover_bytes += len(frame)

    async def settle(self):
        """Every weight is here: the session rewound and put at the target split (position 0,
        so no KV moves), kept as a fixed-split :class:`SplitRunner` for the next calls."""
        await self.server.reset()
        self.server.position = 0
        if self.split != self.target:
            head = await self.server.control({"op": "move", "split": self.target, "position": 0,
                                              "holds": list(range(self.target, self.n))})
            if head["direction"] == "to_edge":
                await self.server.control({"op": "commit"})
            else:
                await self.server.recv_json()
        _free(self.cache)
        self.cache = None
        server = self.server
        if self.target == 0:          # split 0 runs without a session
            server.close()
            server = None
        return SplitRunner(self.em, self.target, self.backend, server)

    def close(self):
        for t in self.growing:
            t.cancel()
        self.server.close()
        _free(self.cache)
        self.cache = None
        self.backend.destroy()


class ProgressiveEncoder(SplitRunner):
    """An encoder at target split ``target`` while its layers load: each call runs at the split
    the edge can serve now — the first layer not yet verified here, from N down to the target
    (the server runs the layers below it) — and the load goes on after the call returns.
    Encoders keep no KV, so moving the split is only the server session's ``move`` (no frames)
    and happens between two calls. ``trace`` is [{call, split}] (call = calls served before)."""

    progressive = True

    def __init__(self, edge_model, target, backend, server, loading):
        n = edge_model.model.n_layers
        super().__init__(edge_model, n, backend, server)   # self.split: the split serving now
        self.n, self.target = n, target
        self.loading = loading       # the stream's task (it outlives the call that started it)
        self.trace = [{"call": 0, "split": n}]
        self.calls = 0
        self.served = n              # the split of the last call
        self.on_move = None          # (call, split) -> None, for the page

    def serving_split(self) -> int:
        k = self.backend.runnable_from()
        return max(self.target, self.n if k is None else k)

    async def embed(self, seqs):
        k = self.serving_split()
        if k < self.split:
            await self.move(k)
        self.served = self.split
        out = await super().embed(seqs)
        self.calls += 1
        return out

    async def move(self, new: int):
        if new == 0:                 # the edge embeds too: the server has nothing left to run
            self.server.close()
            self.server = None
        else:
            ready = sorted(i for i in range(self.target, self.n) if i in self.backend.ready)
            head = await self.server.control({"op": "move", "split": new, "holds": ready})
            if head.get("direction") != "to_edge" or int(head.get("frames", 0)):
                raise EdgeError(f"the server answered a move of an encoder with {head}", "server")
            done = await self.server.control({"op": "commit"})
            if int(done.get("split", -1)) != new:
                raise EdgeError(f"the server ended the move at split {done.get('split')}, not {new}", "server")
        self.split = new
        self.trace.append({"call": self.calls, "split": new})
        if self.on_move is not None:
            self.on_move(self.calls, new)

    def close(self):
        self.loading.cancel()
        super().close()
