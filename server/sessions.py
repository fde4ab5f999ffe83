"""Split sessions: the server runs layers [0, split) and keeps their KV cache per session.

Every call on a session holds that session's ``asyncio.Lock`` (FIFO, so calls run in arrival
order) and runs numpy in a worker thread, so the event loop keeps serving other sessions.

A session belongs to whoever created it: the create response carries a secret ``key`` that every
later call must present (``X-Session-Key``, or ``?key=`` on the WebSocket). A client holds at
most ``max_sessions_per_client``; when it, or the whole table, is full, the least recently used
idle session makes room (the client's own first) instead of newcomers being refused for the TTL.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import time
from collections import deque

import anyio
import numpy as np

from pyapp.kvwire import HEADER, KVHeader, check_handover, parse_header
from pyapp.models import attention_windows

from .ring import Ring, mint_id
from .runtime import ApiError, Limits, ModelEntry, Registry

WIRE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
MMAP_THRESHOLD = 256 << 10
# The load figures (SessionManager.load) cover the last LOAD_STEPS one-token steps of any
# session that ran layers, at most LOAD_MAX_AGE seconds old.
LOAD_STEPS = 16
LOAD_MAX_AGE = 30.0
# Test hook: every step that runs layers also sleeps this many ms per layer in its worker, as if
# other work shared the CPU: the server is slower for real, and its load figures say so. Tests set
# it in-process; `PYAPP_TEST_DELAY_MS_PER_LAYER=80 pyapp serve` sets it for a served app.
TEST = {"delay_ms_per_layer": float(os.environ.get("PYAPP_TEST_DELAY_MS_PER_LAYER") or 0)}


def lazy_large_allocations() -> bool:
    """Make glibc give every allocation of 256 KiB or more its own mmap (a fixed threshold: by
    default it rises after the first large free, and KV caches then come from the heap, which is
    never handed back). Fresh mmap pages are committed only when touched, so a session's KV cache
    costs memory as its positions fill, and all of it returns to the OS when the session ends."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False   # not glibc: nothing to tune


async def _close_quietly(ws, code):
    try:
        await ws.close(code=code)
    except Exception:  # noqa: BLE001 - already closed / disconnected
        pass


class PositionOnly:
    """The 'cache' of a split-0 session: the server runs nothing, it only tracks the position."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.nbytes = 0

    def truncate(self, n: int):
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {n}")
        self.length = n


class Move:
    """A split move waiting for its other half: ``to_edge`` waits for the client's commit (the
    server keeps its copy until then), ``to_server`` for the client's KV frames (the server's
    cache is untouched until every frame is in). It belongs to one WebSocket (``owner``; None
    over HTTP) and is dropped with it, so a cut hand-over leaves the session at ``old``."""

    def __init__(self, old: int, new: int, position: int, kv_dtype: str, owner=None):
        self.old, self.new, self.position, self.kv_dtype, self.owner = old, new, position, kv_dtype, owner
        self.to_edge = new < old
        self.layers = list(range(old - 1, new - 1, -1)) if self.to_edge else list(range(old, new))
        self.frames: dict[int, tuple] = {}   # to_server: layer -> (p0, K, V) f32 [Hkv, n, hd]

    def info(self) -> dict:
        return {"op": "handover", "from": self.old, "split": self.new, "position": self.position,
                "direction": "to_edge" if self.to_edge else "to_server", "layers": self.layers,
                "kv_dtype": self.kv_dtype}


def kv_bytes(m, ctx: int, split: int) -> int:
    """KV accounted for layers [0, split) of a session of ``ctx`` tokens (f32 K and V)."""
    return (2 * split * m.n_kv_heads * ctx * m.head_dim * 4) if (m.causal and split) else 0


class Session:
    def __init__(self, sid: str, entry: ModelEntry, split: int, dtype: str, weights: str, cache,
                 owner: str = "", node: str | None = None):
        self.id = sid
        self.node = node
        self.key = secrets.token_urlsafe(24)
        self.owner = owner
        self.entry = entry
        self.split = split
        self.dtype = dtype
        self.weights = weights
        self.cache = cache
        self.lock = asyncio.Lock()
        self.created = time.time()
        self.last_used = time.monotonic()
        self.busy = 0
        self.closed = False
        self.nbytes = getattr(cache, "nbytes", 0)
        self.steps = 0
        self.sockets: set = set()   # open WebSockets, closed when the session ends
        self.holds: set[int] = set()      # layers the edge says it holds (the last move's "holds")
        self.move: Move | None = None     # a hand-over in progress (the split moves when it ends)

    @property
    def position(self) -> int:
        return self.cache.length if self.cache is not None else 0

    @property
    def idle(self) -> bool:
        return self.busy == 0 and not self.lock.locked()

    def key_ok(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self.key.encode())

    def created_info(self) -> dict:
        """What only the creator sees: the key, and a WebSocket URL that carries it."""
        return {**self.info(), "key": self.key, "ws": f"/v1/sessions/{self.id}/ws?key={self.key}"}

    def info(self) -> dict:
        m = self.entry.model
        return {"id": self.id, "model": self.entry.name, "split": self.split,
                "n_layers": m.n_layers, "hidden": m.hidden, "dtype": self.dtype,
                "weights": self.weights, "position": self.position,
                "context": self.cache.capacity if self.cache is not None else 0,
                "bytes": self.nbytes, "node": self.node, "ws": f"/v1/sessions/{self.id}/ws"}


class SessionManager:
    def __init__(self, registry: Registry, limits: Limits, ring: Ring | None = None,
                 node: str | None = None):
        self.registry = registry
        self.limits = limits
        self.ring = ring    # with ``node``: mint only ids the balancer's ring routes to this node
        self.node = node
        self.sessions: dict[str, Session] = {}
        lazy_large_allocations()
        # one GPU queue: serialise its work; numpy releases the GIL in BLAS, so use threads
        self.limiter = anyio.CapacityLimiter(1 if registry.backend_kind == 'wgpu' else limits.threads)
        self.evicted = 0
        self.recent: deque = deque(maxlen=LOAD_STEPS)   # (monotonic end, ms per layer, ms waited)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.sessions.values())

    def stats(self) -> dict:
        return {"sessions": len(self.sessions), "bytes": self.total_bytes,
                "evicted": self.evicted, "max_sessions": self.limits.max_sessions,
                "max_total_bytes": self.limits.max_total_bytes}

    def load(self) -> dict:
        """How loaded the server is now (docs/server.md "Load"): sessions with a call running or
        queued, calls waiting for a worker, and over the recent one-token steps of every session
        the median compute ms per layer and ms waited for a worker (None before any step)."""
        now = time.monotonic()
        r = [x for x in self.recent if now - x[0] <= LOAD_MAX_AGE]

        def med(i):
            v = sorted(x[i] for x in r)
            return round(v[len(v) // 2], 3) if v else None
        return {"busy_sessions": sum(not s.idle for s in self.sessions.values()),
                "waiting": int(self.limiter.statistics().tasks_waiting),
                "workers": int(self.limiter.total_tokens), "steps": len(r),
                "ms_per_layer": med(1), "wait_ms": med(2)}

    def _drop(self, s: Session, code: int = 4404):
        self.sessions.pop(s.id, None)
        s.closed = True
        s.cache = None
        s.nbytes = 0
        for ws in list(s.sockets):
            asyncio.ensure_future(_close_quietly(ws, code))
        s.sockets.clear()

    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        ttl = self.limits.session_ttl
        n = 0
        for s in list(self.sessions.values()):
            if s.idle and now - s.last_used > ttl:
                self._drop(s, 4408)
                n += 1
        self.evicted += n
        return n

    def _evict_lru(self, among) -> bool:
        """End the least recently used idle session of ``among``; False if all are busy."""
        idle = [s for s in among if s.idle]
        if not idle:
            return False
        self._drop(min(idle, key=lambda s: s.last_used), 4408)
        self.evicted += 1
        return True

    async def sweeper(self):
        while True:
            await asyncio.sleep(min(self.limits.evict_interval, max(self.limits.session_ttl / 4, 0.05)))
            self.evict_idle()

    def get(self, sid: str, key: str | None = None, admin: bool = False) -> Session:
        """The session, if ``key`` is its key (or the caller holds the admin token)."""
        s = self.sessions.get(sid)
        if s is None or s.closed:
            raise ApiError(404, f"unknown session {sid[:64]!r} ({self._why_unknown(sid)})",
                           param="session")
        if not admin and not s.key_ok(key):
            raise ApiError(403, "this session's key is missing or wrong: send the key from the "
                                "create response as X-Session-Key (or ?key= on the WebSocket)",
                           "permission_error", param="session")
        return s

    def _why_unknown(self, sid: str) -> str:
        owner = self.ring.node_for(sid) if self.ring is not None else self.node
        if owner == self.node:
            return "ended, evicted or never created"
        return (f"it belongs to node {owner!r}, this is node {self.node!r}: that server is gone "
                "or the balancer's ring differs")

    # ------------------------------------------------------------------ lifecycle
    def _validate(self, body):
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object {model, split, dtype?}")
        unknown = set(body) - {"model", "split", "dtype", "weights", "context"}
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        entry = self.registry.get(body.get("model"))
        m = entry.model
        split = body.get("split")
        for k in ("dtype", "weights"):
            if k in body and not isinstance(body[k], str):
                raise ApiError(400, f"{k} must be a string", param=k)
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= m.n_layers:
            raise ApiError(400, f"split must be an integer in 0..{m.n_layers}", param="split")
        dtype = body.get("dtype", "f32")
        if dtype not in WIRE_DTYPES:
            raise ApiError(400, "dtype must be 'f32' or 'f16'", param="dtype")
        weights = body.get("weights", entry.weights)
        if not isinstance(weights, str) or weights not in entry.dtypes():
            raise ApiError(400, f"weights must be one of {entry.dtypes()}", param="weights")
        ctx = body.get("context", entry.context)
        if isinstance(ctx, bool) or not isinstance(ctx, int) or not 1 <= ctx <= entry.context:
            raise ApiError(400, f"context must be an integer in 1..{entry.context}", param="context")
        # memory: preallocated K and V (f32) for layers [0, split)
        need = kv_bytes(m, ctx, split)
        if need > self.limits.max_session_bytes:
            raise ApiError(400, f"a session of {ctx} tokens at split {split} needs {need} bytes of "
                                f"KV cache, over the per-session limit of {self.limits.max_session_bytes}; "
                                "ask for a smaller context")
        return entry, split, dtype, weights, ctx, need

    def _make_room(self, owner: str, need: int):
        """Evict (expired first, then least recently used idle) until ``owner`` may open one more
        session of ``need`` bytes; 429 when everything in the way is busy."""
        lim = self.limits
        self.evict_idle()
        while sum(s.owner == owner for s in self.sessions.values()) >= lim.max_sessions_per_client:
            if not self._evict_lru([s for s in self.sessions.values() if s.owner == owner]):
                raise ApiError(429, f"this client already has {lim.max_sessions_per_client} sessions "
                                    "busy; wait for one or DELETE it", "rate_limit_error")
        while len(self.sessions) >= lim.max_sessions:
            if not self._evict_lru(self.sessions.values()):
                raise ApiError(429, f"all {lim.max_sessions} sessions are busy; try again shortly",
                               "rate_limit_error")
        while self.total_bytes + need > lim.max_total_bytes:
            if not self._evict_lru(self.sessions.values()):
                raise ApiError(429, "the server's KV-cache memory is full; try later or a smaller "
                                    "context", "rate_limit_error")

    async def create(self, body: dict, owner: str = "") -> Session:
        entry, split, dtype, weights, ctx, need = self._validate(body)
        self._make_room(owner, need)
        m = entry.model
        if split == 0 or not m.causal:
            cache = PositionOnly(ctx)
        else:
            def make():
                return entry.backend(weights).new_cache(ctx, 0, split)

            cache = await anyio.to_thread.run_sync(make, limiter=self.limiter)
            self._make_room(owner, need)  # others may have taken the room meanwhile
        s = Session(mint_id(self.ring, self.node), entry, split, dtype, weights, cache, owner,
                    self.node)
        s.nbytes = int(getattr(cache, "nbytes", 0) or need)
        self.sessions[s.id] = s
        return s

    def delete(self, s: Session):
        self._drop(s)

    # ------------------------------------------------------------------ compute
    def parse_ids(self, s: Session, body: bytes) -> np.ndarray:
        if len(body) == 0:
            raise ApiError(400, "empty body: send little-endian int32 token ids")
        if len(body) % 4:
            raise ApiError(400, f"body of {len(body)} bytes is not a whole number of int32 token ids")
        ids = np.frombuffer(body, dtype="<i4")
        vocab = s.entry.model.vocab
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise ApiError(400, f"token id {bad} is outside 0..{vocab - 1}")
        return ids

    async def forward(self, s: Session, body: bytes, expect_position: int | None = None):
        """(hidden-state bytes, T, position after) for one step of token ids."""
        s.busy += 1
        try:
            async with s.lock:
                if s.closed:
                    raise ApiError(404, f"unknown session {s.id!r} (ended or evicted)")
                s.last_used = time.monotonic()
                ids = self.parse_ids(s, body)
                cache = s.cache
                self._no_move(s)
                if expect_position is not None and expect_position != cache.length:
                    raise ApiError(409, f"session is at position {cache.length}, not {expect_position}")
                T = int(ids.size)
                m = s.entry.model
                if m.causal and cache.length + T > cache.capacity:
                    raise ApiError(400, f"context overflow: {cache.length} + {T} tokens > "
                                        f"{cache.capacity}; truncate or reset the session")
                if not m.causal and T > cache.capacity:
                    raise ApiError(400, f"context overflow: {T} tokens > {cache.capacity}")
                if s.split == 0:
                    if m.causal:
                        cache.length += T
                    return b"", 0, cache.length
                wire = WIRE_DTYPES[s.dtype]
                t_queued = time.perf_counter()
                split = s.split

                def run():
                    t0 = time.perf_counter()
                    be = s.entry.backend(s.weights)
                    x = be.forward(ids=ids, cache=cache, start=0, stop=split, head=False)
                    if TEST["delay_ms_per_layer"]:
                        time.sleep(TEST["delay_ms_per_layer"] * split / 1e3)
                    return np.ascontiguousarray(x, dtype=wire).tobytes(), t0, time.perf_counter()

                try:
                    out, t0, t1 = await anyio.to_thread.run_sync(run, limiter=self.limiter)
                except ValueError as e:
                    raise ApiError(400, str(e))
                if T == 1:
                    self.recent.append((time.monotonic(), (t1 - t0) * 1e3 / split, (t0 - t_queued) * 1e3))
                s.steps += 1
                s.last_used = time.monotonic()
                return out, T, (cache.length if m.causal else 0)
        finally:
            s.busy -= 1

    async def rewind(self, s: Session, length: int | None):
        s.busy += 1
        try:
            async with s.lock:
                if s.closed:
                    raise ApiError(404, f"unknown session {s.id!r} (ended or evicted)")
                s.last_used = time.monotonic()
                self._no_move(s)
                n = length
                if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= s.cache.length:
                    raise ApiError(400, f"length must be an integer in 0..{s.cache.length}",
                                   param="length")
                s.cache.truncate(n)
                return s.cache.length
        finally:
            s.busy -= 1

    # ------------------------------------------------------------------ moving the split
    @staticmethod
    def _pending(s: Session, owner, to_edge: bool, what: str) -> Move:
        """The session's move of this socket and direction, or the error that says why not."""
        if s.closed:
            raise ApiError(404, f"unknown session {s.id!r} (ended or evicted)")
        move = s.move
        if move is None or move.owner is not owner or move.to_edge != to_edge:
            raise ApiError(409, f"no hand-over {what}")
        return move

    @staticmethod
    def _no_move(s: Session):
        if s.move is not None:
            raise ApiError(409, f"the split is moving from {s.move.old} to {s.move.new}: finish the "
                                "hand-over (commit, or send its KV frames) or cancel it first")

    def _check_move(self, s: Session, body) -> tuple[int, str]:
        """(new split, KV wire dtype) of a move request, or the ApiError that refuses it."""
        if not isinstance(body, dict):
            raise ApiError(400, "a move is a JSON object {split, holds?, kv_dtype?, position?}")
        unknown = set(body) - {"op", "split", "holds", "kv_dtype", "position"}
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        m = s.entry.model
        new = body.get("split")
        if isinstance(new, bool) or not isinstance(new, int) or not 0 <= new <= m.n_layers:
            raise ApiError(400, f"split must be an integer in 0..{m.n_layers}", param="split")
        kv_dtype = body.get("kv_dtype", "f32")
        if kv_dtype not in WIRE_DTYPES:
            raise ApiError(400, "kv_dtype must be 'f32' or 'f16'", param="kv_dtype")
        holds = body.get("holds")
        if holds is not None:
            if (not isinstance(holds, list) or len(holds) > m.n_layers
                    or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < m.n_layers
                           for i in holds)):
                raise ApiError(400, f"holds must be a list of layer indices in 0..{m.n_layers - 1}",
                               param="holds")
            s.holds = set(holds)
        pos = body.get("position")
        if pos is not None and pos != s.position:
            raise ApiError(409, f"session is at position {s.position}, not {pos}")
        self._no_move(s)
        if new < s.split:
            missing = [i for i in range(new, s.split) if i not in s.holds]
            if missing:
                low = s.split
                while low > 0 and (low - 1) in s.holds:
                    low -= 1
                raise ApiError(400, f"the edge does not hold layer {missing[-1]} (holds says so): "
                                    f"the split can move from {s.split} down to {low} only",
                               param="split")
        elif new > s.split:
            ctx = s.cache.capacity
            need = kv_bytes(m, ctx, new)
            if need > self.limits.max_session_bytes:
                raise ApiError(400, f"split {new} needs {need} bytes of KV cache for {ctx} tokens, "
                                    f"over the per-session limit of {self.limits.max_session_bytes}",
                               param="split")
            if self.total_bytes - s.nbytes + need > self.limits.max_total_bytes:
                raise ApiError(429, f"the server's KV-cache memory is full: it cannot take layers "
                                    f"{s.split}..{new - 1} back now; keep the split or try later",
                               "rate_limit_error")
        return new, kv_dtype

    def _real_cache(self, s: Session):
        """The session's cache as one that holds layers (a split-0 session only tracked the
        position until now)."""
        if isinstance(s.cache, PositionOnly):
            c = s.entry.backend(s.weights).new_cache(s.cache.capacity, 0, 0)
            c.length = s.cache.length
            s.cache = c
        return s.cache

    def _frames(self, s: Session, move: Move) -> list[bytes]:
        """The KV frames of a move to the edge (worker thread)."""
        m = s.entry.model
        wire = WIRE_DTYPES[move.kv_dtype]
        out = []
        for i in move.layers:
            p0, k, v = s.cache.read_layer(i)
            k, v = (np.frombuffer(a, "<f4") if isinstance(a, bytes) else a for a in (k, v))
            h = KVHeader(i, p0, s.cache.length, m.n_kv_heads, m.head_dim, move.kv_dtype)
            out.append(h.pack() + np.ascontiguousarray(k, wire).tobytes()
                       + np.ascontiguousarray(v, wire).tobytes())
        return out

    async def start_move(self, s: Session, body, owner=None) -> tuple[Move, list[bytes]]:
        """Validate a move; for a move to the edge also the KV frames to send. Nothing changes
        until ``commit_move`` (to the edge) or the last ``receive_frame`` (to the server)."""
        s.busy += 1
        try:
            async with s.lock:
                if s.closed:
                    raise ApiError(404, f"unknown session {s.id!r} (ended or evicted)")
                s.last_used = time.monotonic()
                new, kv_dtype = self._check_move(s, body)
                move = Move(s.split, new, s.position, kv_dtype, owner)
                kv = s.entry.model.causal and s.position > 0
                frames = []
                if move.to_edge and kv:
                    frames = await anyio.to_thread.run_sync(self._frames, s, move, limiter=self.limiter)
                if not kv:
                    move.layers = []
                s.move = move
                return move, frames
        finally:
            s.busy -= 1

    def cancel_move(self, s: Session, owner=None):
        if s.move is not None and s.move.owner is owner:
            s.move = None

    def _apply(self, s: Session, move: Move):
        """Drop or add the moved layers and take the new split (worker thread)."""
        m = s.entry.model
        if m.causal:
            cache = self._real_cache(s) if not move.to_edge else s.cache
            if move.to_edge:
                for i in range(move.new, move.old):
                    if hasattr(cache, "drop_layer"):
                        cache.drop_layer(i)
            else:
                for i in range(move.old, move.new):
                    cache.add_layer(i)
                    if i in move.frames:
                        p0, k, v = move.frames[i]
                        cache.write_layer(i, p0, k, v)
        s.split = move.new
        s.nbytes = kv_bytes(m, s.cache.capacity, move.new)
        s.move = None

    async def commit_move(self, s: Session, owner=None) -> Session:
        """The edge has every frame of a move to it: the server drops its copy."""
        async with s.lock:
            move = self._pending(s, owner, True, "to the edge is waiting for a commit")
            await anyio.to_thread.run_sync(self._apply, s, move, limiter=self.limiter)
            s.last_used = time.monotonic()
            return s

    async def receive_frame(self, s: Session, data, owner=None) -> bool:
        """One KV frame of a move to the server; True once the move is done. A bad frame cancels
        the move (the session stays at its old split) and raises."""
        async with s.lock:
            move = self._pending(s, owner, False, "to the server is waiting for KV frames")
            try:
                self._take_frame(s, move, data)
            except ApiError:
                s.move = None
                raise
            if len(move.frames) < len(move.layers):
                return False
            await anyio.to_thread.run_sync(self._apply, s, move, limiter=self.limiter)
            s.last_used = time.monotonic()
            return True

    async def finish_move(self, s: Session, owner=None):
        """End a move to the server that needs no frames (position 0, or an encoder)."""
        async with s.lock:
            move = self._pending(s, owner, False, "to the server is ready to finish")
            if move.layers:
                raise ApiError(409, f"the move waits for the KV of layers {move.layers}")
            await anyio.to_thread.run_sync(self._apply, s, move, limiter=self.limiter)

    def _take_frame(self, s: Session, move: Move, data):
        m = s.entry.model
        try:
            h = parse_header(data)
            if h.layer not in move.layers or h.layer in move.frames:
                raise ValueError(f"KV frame of layer {h.layer} is not one this move waits for "
                                 f"({', '.join(str(i) for i in move.layers if i not in move.frames)})")
            if (h.n_kv_heads, h.head_dim) != (m.n_kv_heads, m.head_dim):
                raise ValueError(f"KV frame of layer {h.layer} is [{h.n_kv_heads}, n, {h.head_dim}]; "
                                 f"this model's is [{m.n_kv_heads}, n, {m.head_dim}]")
            windows = attention_windows(m)
            check_handover(h.layer, h.p0, h.positions, move.position, windows.get(h.layer))
        except ValueError as e:
            raise ApiError(400, str(e))
        wire = WIRE_DTYPES[h.dtype]
        body = memoryview(data)[HEADER.size:]
        shape = (h.n_kv_heads, h.positions, h.head_dim)
        k = np.frombuffer(body[:h.part_bytes], wire).reshape(shape).astype(np.float32)
        v = np.frombuffer(body[h.part_bytes:], wire).reshape(shape).astype(np.float32)
        move.frames[h.layer] = (h.p0, k, v)
