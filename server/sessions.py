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
import secrets
import time

import anyio
import numpy as np

from .ring import Ring, mint_id
from .runtime import ApiError, Limits, ModelEntry, Registry

WIRE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
MMAP_THRESHOLD = 256 << 10


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

    # ------------------------------------------------------------------ bookkeeping
    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.sessions.values())

    def stats(self) -> dict:
        return {"sessions": len(self.sessions), "bytes": self.total_bytes,
                "evicted": self.evicted, "max_sessions": self.limits.max_sessions,
                "max_total_bytes": self.limits.max_total_bytes}

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
        weights = body.get("weights", "f32")
        if not isinstance(weights, str) or weights not in entry.dtypes():
            raise ApiError(400, f"weights must be one of {entry.dtypes()}", param="weights")
        ctx = body.get("context", entry.context)
        if isinstance(ctx, bool) or not isinstance(ctx, int) or not 1 <= ctx <= entry.context:
            raise ApiError(400, f"context must be an integer in 1..{entry.context}", param="context")
        # memory: preallocated K and V (f32) for layers [0, split)
        need = (2 * split * m.n_kv_heads * ctx * m.head_dim * 4) if (m.causal and split) else 0
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

                def run():
                    be = s.entry.backend(s.weights)
                    x = be.forward(ids=ids, cache=cache, start=0, stop=s.split, head=False)
                    return np.ascontiguousarray(x, dtype=wire).tobytes()

                try:
                    out = await anyio.to_thread.run_sync(run, limiter=self.limiter)
                except ValueError as e:
                    raise ApiError(400, str(e))
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
                n = length
                if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= s.cache.length:
                    raise ApiError(400, f"length must be an integer in 0..{s.cache.length}",
                                   param="length")
                s.cache.truncate(n)
                return s.cache.length
        finally:
            s.busy -= 1
