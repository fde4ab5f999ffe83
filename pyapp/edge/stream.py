"""Weight streaming: manifest chunks -> GPU buffers, the bytes never entering the wasm heap.

Python orchestrates (which chunks, how many in flight, where each tensor goes); ``stream.js``
(evaluated once) moves the bytes: ``fetch`` with a ``Range`` header, the body read into one JS
``Uint8Array`` per manifest chunk, resumed with a new ``Range`` from the first missing byte when a
body breaks off, ends short or stalls, checked with SHA-256 (``crypto.subtle``, or the vendored
js-sha256 where the page is not a secure context) and refetched (bypassing the HTTP cache) when
the digest is wrong.  Every wait is bounded (:data:`NET`).  Python then sees a JsProxy of that
array and hands ``subarray`` views of it to ``GpuBackend.write_weight``.  Never call ``to_py()``
or ``bytes()`` on weight data.

The planning half (:func:`select_chunks`, :func:`plan_requests`) is pure Python and runs on
CPython for the tests; measurements (upload paths, plain fetch) live in ``measure.py``.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

from .errors import EdgeError, describe

IS_PYODIDE = sys.platform == "emscripten"

# Ranges of one chunk closer than this are fetched in one request and the gap dropped.
COALESCE_GAP = 64 * 1024
DEFAULT_PARALLEL = 3
# Network limits: no bytes for stall_s aborts a request; it is retried from the missing byte at
# most tries times (backoff up to 2 s), so a dead connection fails after about
# (tries + 1) * stall_s.  Small documents (manifest, tokenizer, API replies) get doc_s each.
NET = {"stall_s": 20.0, "tries": 4, "doc_s": 30.0, "doc_tries": 3}

# --------------------------------------------------------------------------- planning (pure)


def chunk_tensor_names(chunk):
    return [t["name"] for t in chunk["tensors"]]


def select_chunks(manifest, needed=None, ids=None):
    """The manifest chunks that cover the tensor names ``needed`` (or the chunk ``ids``).

    Greedy, biggest chunk first: a chunk that adds no needed tensor is dropped, so a tied
    embedding / LM head (SmolLM2's ``head`` holds ``embed_tokens``) streams once.  Returns
    (chunks in manifest order, owner) where owner maps each tensor to the chunk that writes it.
    """
    chunks = manifest["chunks"]
    if ids is not None:
        want = set(ids)
        cand = [c for c in chunks if c["id"] in want]
        need = set()
        for c in cand:
            need |= set(chunk_tensor_names(c))
    else:
        need = set(needed)
        cand = [c for c in chunks if need & set(chunk_tensor_names(c))]
    order = sorted(range(len(cand)), key=lambda i: -int(cand[i]["bytes"]))
    covered, keep = set(), set()
    for i in order:
        names = set(chunk_tensor_names(cand[i])) & need
        if names - covered:
            keep.add(i)
            covered |= names
    missing = need - covered
    if missing:
        raise KeyError(f"the manifest has no chunk for {sorted(missing)[:3]}")
    sel = [c for i, c in enumerate(cand) if i in keep]
    owner = {}
    for c in sorted(sel, key=lambda c: -int(c["bytes"])):
        for n in chunk_tensor_names(c):
            if n in need and n not in owner:
                owner[n] = c["id"]
    return sel, owner


def plan_requests(ranges, gap=COALESCE_GAP):
    """Coalesce a chunk's file ranges into HTTP requests.

    Returns [[req_offset, req_length, [[file_offset, length, dst_offset], ...]], ...]: each
    request fetches one contiguous span of the file; its pieces are the bytes to keep, with
    where they go in the chunk buffer (the chunk's ranges concatenated, as its sha256 covers).
    """
    out = []
    dst = 0
    for off, length in ranges:
        if out and off - (out[-1][0] + out[-1][1]) <= gap and off >= out[-1][0] + out[-1][1]:
            req = out[-1]
            req[1] = off + length - req[0]
            req[2].append([off, length, dst])
        else:
            out.append([off, length, [[off, length, dst]]])
        dst += length
    return out


def shared_files(chunks):
    """The files of which ``chunks`` fetch more than one piece.  Their ranges go around the
    browser's HTTP cache: Chromium's cache entry for a URL restarts concurrent Range requests on
    it (measured: 14-15 requests on the wire for 9 fetches of MiniLM's one file, a stalled one
    silently replaced), and a cache entry of a GB file is no use; a file per chunk (a static
    site's layout) keeps the cache for a repeat visit."""
    count = {}
    for c in chunks:
        for p in chunk_pieces(c):
            count[p["file"]] = count.get(p["file"], 0) + 1
    return {f for f, n in count.items() if n > 1}


def tensor_slices(chunk):
    """[(name, dst_offset, length)] of each tensor inside the chunk buffer."""
    starts = []
    dst = 0
    for off, length in chunk["ranges"]:
        starts.append((off, length, dst))
        dst += length
    out = []
    for t in chunk["tensors"]:
        for off, length, d in starts:
            if off <= t["offset"] and t["offset"] + t["length"] <= off + length:
                out.append((t["name"], d + t["offset"] - off, t["length"]))
                break
        else:
            raise ValueError(f"tensor {t['name']} lies outside the ranges of chunk {chunk['id']}")
    return out


def chunk_pieces(chunk, owner=None):
    """The chunk as the pieces the manifest hashes (each <= 16 MiB; the whole chunk when it lists
    none; a piece with a fourth field is that file's whole content, pyapp/edge/offline.py):
    [{id, layer, file, ranges (file spans), bytes, sha256, slices}] with slices
    [(tensor, offset in the piece, length, offset in the tensor)] of the tensors this chunk
    writes (``owner``).  A piece is fetched, verified and uploaded alone, then dropped."""
    pieces = chunk.get("pieces") or [[0, int(chunk["bytes"]), chunk.get("sha256") or ""]]
    tensors = [t for t in tensor_slices(chunk) if owner is None or owner.get(t[0]) == chunk["id"]]
    out = []
    for a, n, sha, *own in pieces:
        ranges, pos = [], 0
        for off, length in chunk["ranges"]:
            lo, hi = max(a, pos), min(a + n, pos + length)
            if lo < hi:
                ranges.append([off + lo - pos, hi - lo])
            pos += length
        if own:                       # a piece in a file of its own (a static site's big chunk)
            ranges = [[0, n]]
        slices = []
        for name, dst, length in tensors:
            lo, hi = max(a, dst), min(a + n, dst + length)
            if lo < hi:
                slices.append((name, lo - a, hi - lo, lo - dst))
        out.append({"id": chunk["id"], "layer": chunk.get("layer"), "file": own[0] if own else chunk["file"],
                    "ranges": ranges, "bytes": n, "sha256": sha, "slices": slices})
    return out


def absolute_url(base, url):
    if isinstance(url, (list, tuple)):          # a document in parts (fetch_doc)
        return [absolute_url(base, u) for u in url]
    if "://" in url or not base:
        return url
    return base.rstrip("/") + ("" if url.startswith("/") else "/") + url


# --------------------------------------------------------------------------- the JS half


def js_helper():
    """The ``stream.js`` object (evaluated once per page)."""
    from .jsfiles import load
    return load("stream")


def wasm_heap_bytes():
    """Size of the Pyodide module's memory (the wasm heap), in bytes."""
    if not IS_PYODIDE:
        return 0
    try:
        import pyodide_js  # type: ignore[import-not-found]
        return int(pyodide_js._module.HEAPU8.buffer.byteLength)
    except Exception:  # noqa: BLE001
        return int(js_helper().wasmHeap())


def js_heap_bytes():
    return int(js_helper().jsHeap()) if IS_PYODIDE else 0


# --------------------------------------------------------------------------- sinks


class BackendSink:
    """Hands each tensor slice to ``GpuBackend.write_weight(name, byte_offset, js_view)``; takes
    pieces of tensors (``partial``), so the loader streams a chunk a manifest piece at a time."""

    partial = True

    def __init__(self, backend):
        self.backend = backend

    async def write(self, helper, data, slices):
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        js_slices = to_js([list(s) for s in slices])
        views = helper.views(data, js_slices)
        try:
            for i, sl in enumerate(slices):
                v = views[i]
                try:
                    self.backend.write_weight(sl[0], sl[3] if len(sl) > 3 else 0, v)
                finally:
                    v = None
        finally:
            views = None
            js_slices = None


# --------------------------------------------------------------------------- the loader


@dataclass
class ChunkStat:
    id: str
    layer: int | None
    bytes: int
    ms: float
    ms_fetch: float
    ms_digest: float
    ms_upload: float
    requests: int
    resumes: int
    errors: int
    refetches: int
    verified: bool

    @property
    def mb_per_s(self):
        return self.bytes / 1e6 / (self.ms / 1e3) if self.ms > 0 else 0.0


@dataclass
class LoadStats:
    bytes: int = 0
    seconds: float = 0.0
    wasm_heap_before: int = 0
    wasm_heap_after: int = 0
    js_heap_before: int = 0
    peak_js_heap: int = 0
    resumes: int = 0
    errors: int = 0
    refetches: int = 0
    requests: int = 0
    largest_buffer: int = 0          # the biggest JS buffer the load held (one piece)
    chunks: list = field(default_factory=list)

    @property
    def wasm_heap_growth(self):
        return self.wasm_heap_after - self.wasm_heap_before

    @property
    def wasm_heap_growth_ratio(self):
        return self.wasm_heap_growth / self.bytes if self.bytes else 0.0

    @property
    def mb_per_s(self):
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self):
        return {
            "bytes": self.bytes, "seconds": round(self.seconds, 3), "mb_per_s": round(self.mb_per_s, 2),
            "wasm_heap_before": self.wasm_heap_before, "wasm_heap_after": self.wasm_heap_after,
            "wasm_heap_growth": self.wasm_heap_growth,
            "wasm_heap_growth_ratio": self.wasm_heap_growth_ratio,
            "js_heap_before": self.js_heap_before, "peak_js_heap": self.peak_js_heap,
            "resumes": self.resumes, "errors": self.errors, "refetches": self.refetches,
            "requests": self.requests, "largest_buffer": self.largest_buffer,
            "chunks": [dict(c.__dict__, mb_per_s=round(c.mb_per_s, 2)) for c in self.chunks],
        }


async def stream_chunks(manifest, chunks, sink, base_url="", parallel=DEFAULT_PARALLEL,
                        owner=None, opts=None, on_chunk=None, cancelled=None):
    """Fetch, verify and upload ``chunks`` with at most ``parallel`` buffers in flight: a piece
    of the manifest (<= 16 MiB) each when the sink takes partial tensors, else a whole chunk.

    ``owner`` (tensor -> chunk id) says which chunk writes a tensor present in several;
    ``on_chunk(ChunkStat)`` is called as each chunk lands; ``opts`` overrides stream.js's limits
    (``stallMs``, ``maxTries``, ``maxAttempts``; ``httpCache`` for every file, else false only
    for :func:`shared_files`); ``cancelled()`` true stops before the next
    piece with code ``cancelled`` (the caller frees what was allocated).  Returns :class:`LoadStats`.
    """
    await ensure_sha256(base_url)
    helper = js_helper()
    helper.resetTotals()
    stats = LoadStats()
    stats.wasm_heap_before = wasm_heap_bytes()
    stats.js_heap_before = js_heap_bytes()
    shared = shared_files(chunks)
    js_opts = {s: _to_js(chunk_opts({"httpCache": not s, **(opts or {})})) for s in (False, True)}
    sem = asyncio.Semaphore(max(1, parallel))
    t0 = time.perf_counter()

    async def piece(chunk, p, acc):
        async with sem:
            if cancelled is not None and cancelled():
                raise EdgeError(f"the load was cancelled before {chunk['id']}", "cancelled")
            url = absolute_url(base_url, manifest["files"][p["file"]]["url"])
            reqs = _to_js(plan_requests(p["ranges"]))
            try:
                res = await helper.fetchChunk(url, reqs, p["bytes"], p["sha256"], chunk["id"],
                                              chunk.get("layer"), js_opts[p["file"] in shared])
            finally:
                reqs = None
            data, st = res.data, res.stats
            stats.largest_buffer = max(stats.largest_buffer, int(p["bytes"]))
            tu = time.perf_counter()
            try:
                await sink.write(helper, data, p["slices"])
                helper.releaseBuffer(data)      # on the GPU now: the next piece reuses it
            finally:
                data = None
                res = None
            acc["ms_upload"] += (time.perf_counter() - tu) * 1e3
            for k, js_k in (("ms_fetch", "msFetch"), ("ms_digest", "msDigest"), ("requests", "requests"),
                            ("resumes", "resumes"), ("errors", "errors"), ("refetches", "refetches")):
                acc[k] += getattr(st, js_k)
            acc["verified"] = acc["verified"] and bool(st.verified)
            st = None

    async def one(chunk):
        if getattr(sink, "partial", False):
            parts = chunk_pieces(chunk, owner)
        elif chunk.get("file") is None:
            raise EdgeError(f"chunk {chunk['id']} is stored in several files: it streams only into a "
                            "sink that takes pieces of tensors", "bad_input")
        else:
            whole = chunk_pieces(dict(chunk, pieces=None))[0]
            parts = [dict(whole, slices=[s[:3] for s in whole["slices"]
                                         if owner is None or owner.get(s[0]) == chunk["id"]])]
        acc = dict(ms_fetch=0.0, ms_digest=0.0, ms_upload=0.0, requests=0, resumes=0, errors=0,
                   refetches=0, verified=True)
        tc = time.perf_counter()
        await asyncio.gather(*(piece(chunk, p, acc) for p in parts))
        cs = ChunkStat(id=chunk["id"], layer=chunk.get("layer"), bytes=int(chunk["bytes"]),
                       ms=(time.perf_counter() - tc) * 1e3, ms_fetch=float(acc["ms_fetch"]),
                       ms_digest=float(acc["ms_digest"]), ms_upload=acc["ms_upload"],
                       requests=int(acc["requests"]), resumes=int(acc["resumes"]),
                       errors=int(acc["errors"]), refetches=int(acc["refetches"]),
                       verified=acc["verified"])
        stats.chunks.append(cs)
        stats.bytes += cs.bytes
        if on_chunk is not None:
            on_chunk(cs)

    try:
        await asyncio.gather(*(one(c) for c in chunks))
    finally:
        js_opts = None
    dev = getattr(sink, "device", None)
    if dev is not None:
        await helper.gpuDone(dev)
    stats.seconds = time.perf_counter() - t0
    stats.wasm_heap_after = wasm_heap_bytes()
    tot = helper.totals
    stats.peak_js_heap = int(tot.peakJsHeap)
    stats.resumes, stats.errors = int(tot.resumes), int(tot.errors)
    stats.refetches, stats.requests = int(tot.refetches), int(tot.requests)
    stats.chunks.sort(key=lambda c: (c.layer is None and c.id != "embed", c.layer or -1))
    return stats


def _js_object(entries):
    import js  # type: ignore[import-not-found]
    return js.Object.fromEntries(entries)


def _to_js(v):
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    return to_js(v, dict_converter=_js_object)


def chunk_opts(opts=None) -> dict:
    """stream.js's options: :data:`NET` in milliseconds, overridden by ``opts``."""
    return {"stallMs": NET["stall_s"] * 1000, "maxTries": NET["tries"], **(opts or {})}


async def ensure_sha256(base_url=""):
    """Integrity is never off: where the page has no ``crypto.subtle`` (plain http on a LAN
    address), load the vendored js-sha256 before streaming, or refuse."""
    import js  # type: ignore[import-not-found]
    from pyodide.code import run_js  # type: ignore[import-not-found]
    if js_helper().hasSubtle() or getattr(js.globalThis, "sha256", None) is not None:
        return
    try:
        run_js(await fetch_doc(absolute_url(base_url, "/vendor/js-sha256/sha256.js"), as_json=False))
    except Exception as e:  # noqa: BLE001
        raise EdgeError("cannot verify the weights: this page has no crypto.subtle and the vendored "
                        f"SHA-256 library did not load ({describe(e)['message']})", "integrity") from e


async def fetch_doc(url, init=None, as_json=False):
    """A small document, bounded in time and retried (:data:`NET`): its text, or with ``as_json``
    a JS object (parsed in JS: tokenizer.json stays out of Python).  ``url`` may be a list: the
    document in parts (a static site splits a file over its per-file cap), joined in JS."""
    h = js_helper()
    js_init = _to_js(init) if init else None
    if isinstance(url, (list, tuple)):
        r = await h.fetchDocParts(_to_js(list(url)), js_init, NET["doc_s"] * 1000, NET["doc_tries"], as_json)
        url = url[0]
    else:
        r = await h.fetchDoc(url, js_init, NET["doc_s"] * 1000, NET["doc_tries"], as_json)
    if not r.ok:
        why = f": {r.message}" if r.message else ""
        raise EdgeError(f"the server answered HTTP {r.status} for {url}{why}",
                        "bad_input" if 400 <= r.status < 500 else "server")
    return r.json if as_json else str(r.text)


async def fetch_json(url, init=None):
    """A small JSON document (a manifest, an API reply) as Python data."""
    return json.loads(await fetch_doc(url, init))


async def load_manifest(model, base_url=""):
    return await fetch_json(absolute_url(base_url, f"/models/{model}/manifest.json"))
