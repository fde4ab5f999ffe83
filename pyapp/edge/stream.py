"""Weight streaming: manifest chunks -> GPU buffers, the bytes never entering the wasm heap.

Python orchestrates (which chunks, how many in flight, where each tensor goes); a small JS
helper (``JS_HELPER`` below, evaluated once) moves the bytes: ``fetch`` with a ``Range`` header,
the response body read chunk by chunk into one JS ``Uint8Array`` per manifest chunk, resumed
with a new ``Range`` from the first missing byte when a body breaks off or comes up short,
checked with ``crypto.subtle.digest('SHA-256')`` and refetched (bypassing the HTTP cache) when
the digest is wrong.  Python then sees a JsProxy of that array and hands ``subarray`` views of it
to the GPU (``queue.writeBuffer`` or a ``mappedAtCreation`` buffer).  Never call ``to_py()`` or
``bytes()`` on weight data.

FFI crossings per chunk: one await of ``fetchChunk``, one call per tensor for the upload (or one
for the whole chunk with :class:`GpuBufferSink`), and a handful of attribute reads.

The planning half (:func:`select_chunks`, :func:`plan_requests`) is pure Python and runs on
CPython for the tests.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

IS_PYODIDE = sys.platform == "emscripten"

# Ranges of one chunk closer than this are fetched in one request and the gap dropped.
COALESCE_GAP = 64 * 1024
DEFAULT_PARALLEL = 3

# --------------------------------------------------------------------------- planning (pure)


def chunk_tensor_names(chunk):
    return [t["name"] for t in chunk["tensors"]]


def chunk_ids_for(n_layers, start, stop, embed, head):
    ids = ["embed"] if embed else []
    ids += [f"layer.{i}" for i in range(start, stop)]
    if head:
        ids.append("head")
    return ids


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


def absolute_url(base, url):
    if "://" in url or not base:
        return url
    return base.rstrip("/") + ("" if url.startswith("/") else "/") + url


# --------------------------------------------------------------------------- the JS half

JS_HELPER = r"""
(() => {
  const now = () => performance.now();
  const hex = (buf) => Array.from(new Uint8Array(buf), b => b.toString(16).padStart(2, '0')).join('');
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  const jsHeap = () => (globalThis.performance && performance.memory) ? performance.memory.usedJSHeapSize : 0;
  const totals = { peakJsHeap: jsHeap(), bytes: 0, resumes: 0, errors: 0, refetches: 0, requests: 0 };
  const sample = () => { const h = jsHeap(); if (h > totals.peakJsHeap) totals.peakJsHeap = h; };
  let lastEmit = 0;
  function emit(detail, force) {
    const t = now();
    if (!force && t - lastEmit < 80) return;
    lastEmit = t;
    try { globalThis.dispatchEvent(new CustomEvent('pyapp:progress', { detail })); } catch (e) {}
  }

  // Fill dst[pieces' dst offsets] with bytes [reqOff, reqOff+reqLen) of url, resuming on failure.
  async function readRequest(url, reqOff, reqLen, pieces, dst, st, reload, opts) {
    let got = 0, tries = 0;
    const maxTries = opts.maxTries || 6;
    while (got < reqLen) {
      const a = reqOff + got, b = reqOff + reqLen - 1;
      try {
        totals.requests++;
        const resp = await fetch(url, { headers: { Range: `bytes=${a}-${b}` },
                                        cache: (reload || tries > 0) ? 'reload' : 'default' });
        if (resp.status !== 206 && resp.status !== 200) {
          const err = new Error(`HTTP ${resp.status} for ${url}`);
          if (resp.status >= 400 && resp.status < 500 && resp.status !== 408 && resp.status !== 429) err.fatal = true;
          throw err;
        }
        let skip = resp.status === 200 ? a : 0;   // the server ignored Range: skip to our offset
        if (resp.status === 206) {
          const cr = resp.headers.get('Content-Range') || '';
          const m = /bytes\s+(\d+)-/.exec(cr);
          if (m && Number(m[1]) !== a) throw new Error(`Content-Range ${cr} does not start at ${a}`);
        }
        const reader = resp.body.getReader();
        try {
          while (got < reqLen) {
            const { done, value } = await reader.read();
            if (done) break;
            let v = value;
            if (skip) {
              if (v.length <= skip) { skip -= v.length; continue; }
              v = v.subarray(skip); skip = 0;
            }
            let n = Math.min(v.length, reqLen - got);
            // copy the kept pieces of file bytes [reqOff+got, reqOff+got+n) into dst
            const lo = reqOff + got, hi = lo + n;
            for (const [po, pl, pd] of pieces) {
              const s = Math.max(lo, po), e = Math.min(hi, po + pl);
              if (s < e) dst.set(v.subarray(s - lo, e - lo), pd + (s - po));
            }
            got += n; st.loaded += n; totals.bytes += n;
            sample();
            emit({ id: st.id, loaded: st.loaded, bytes: st.bytes, ms: now() - st.t0, layer: st.layer });
          }
        } finally {
          if (got >= reqLen) reader.cancel().catch(() => {});
        }
        if (got < reqLen) { st.resumes++; totals.resumes++; }
      } catch (e) {
        st.errors++; totals.errors++;
        st.lastError = String(e && e.message || e);
        if (e && e.fatal) throw e;
      }
      if (got < reqLen) {
        if (++tries > maxTries) throw new Error(`giving up on ${url} bytes ${a}-${b} after ${tries} tries: ${st.lastError || 'short body'}`);
        await sleep(Math.min(2000, 50 * 2 ** tries));
      }
    }
  }

  // One manifest chunk: its (coalesced) requests, then the sha256 of the concatenated ranges.
  async function fetchChunk(url, requests, bytes, sha256, id, layer, opts) {
    opts = opts || {};
    const st = { id, layer, bytes, loaded: 0, resumes: 0, errors: 0, refetches: 0, requests: requests.length,
                 t0: now(), msFetch: 0, msDigest: 0, lastError: null };
    const maxAttempts = opts.maxAttempts || 4;
    for (let attempt = 0; ; attempt++) {
      let dst = new Uint8Array(bytes);
      st.loaded = 0;
      const t1 = now();
      for (const [ro, rl, pieces] of requests)
        await readRequest(url, ro, rl, pieces, dst, st, attempt > 0, opts);
      st.msFetch += now() - t1;
      const t2 = now();
      const digest = (sha256 && opts.verify !== false && globalThis.crypto && crypto.subtle)
        ? hex(await crypto.subtle.digest('SHA-256', dst)) : null;
      st.msDigest += now() - t2;
      st.verified = digest !== null;
      if (digest === null || digest === sha256) {
        st.ms = now() - st.t0;
        emit({ id, loaded: bytes, bytes, ms: st.ms, layer, done: true }, true);
        return { data: dst, stats: st };
      }
      st.refetches++; totals.refetches++;
      st.lastError = `sha256 mismatch for chunk ${id} (got ${digest.slice(0, 12)}..)`;
      console.warn('[pyapp] ' + st.lastError + ', refetching');
      dst = null;
      if (attempt + 1 >= maxAttempts) throw new Error(st.lastError + ` after ${maxAttempts} attempts`);
    }
  }

  // A plain fetch of the same bytes, for comparison (arrayBuffer(), nothing else).
  async function plainFetch(url, requests) {
    const t0 = now(); let n = 0;
    for (const [ro, rl] of requests) {
      const r = await fetch(url, { headers: { Range: `bytes=${ro}-${ro + rl - 1}` }, cache: 'reload' });
      n += (await r.arrayBuffer()).byteLength;
    }
    return { bytes: n, ms: now() - t0 };
  }

  const align4 = (n) => (n + 3) & ~3;
  // Upload the tensors of one chunk into fresh GPU buffers: one FFI call per chunk.
  //   mode 'writeBuffer': createBuffer + queue.writeBuffer(buf, 0, data, off, len)
  //   mode 'mapped':      createBuffer({mappedAtCreation}) + set() into the mapped range + unmap
  function uploadTensors(device, data, slices, mode, usage) {
    const t0 = now();
    const out = new Map();
    usage = usage || (GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC);
    for (const [name, off, len] of slices) {
      const size = align4(len);
      if (mode === 'mapped') {
        const buf = device.createBuffer({ size, usage, mappedAtCreation: true, label: name });
        new Uint8Array(buf.getMappedRange(0, size)).set(data.subarray(off, off + len));
        buf.unmap();
        out.set(name, buf);
      } else {
        const buf = device.createBuffer({ size, usage, label: name });
        if (len % 4 === 0) device.queue.writeBuffer(buf, 0, data, off, len);
        else { const pad = new Uint8Array(size); pad.set(data.subarray(off, off + len)); device.queue.writeBuffer(buf, 0, pad); }
        out.set(name, buf);
      }
    }
    sample();
    return { buffers: out, ms: now() - t0 };
  }

  // Tensor views for a Python sink: one JS array of subarrays, so Python crosses once per chunk.
  function views(data, slices) { return slices.map(([name, off, len]) => data.subarray(off, off + len)); }

  function wasmHeap() {
    const py = globalThis.pyodide || globalThis.__pyodide;
    try { return py._module.HEAPU8.buffer.byteLength; } catch (e) { return 0; }
  }

  async function gpuDone(device) { if (device) await device.queue.onSubmittedWorkDone(); }

  return { fetchChunk, plainFetch, uploadTensors, views, jsHeap, wasmHeap, totals, sample, emit, gpuDone,
           resetTotals() { Object.assign(totals, { peakJsHeap: jsHeap(), bytes: 0, resumes: 0, errors: 0, refetches: 0, requests: 0 }); } };
})()
"""

_helper = None


def js_helper():
    """The JS helper object (created once per page)."""
    global _helper
    if _helper is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        _helper = run_js(JS_HELPER)
    return _helper


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
    """Hands each tensor to ``GpuBackend.write_weight(name, byte_offset, js_view)``."""

    def __init__(self, backend):
        self.backend = backend

    async def write(self, helper, data, slices):
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        js_slices = to_js([list(s) for s in slices])
        views = helper.views(data, js_slices)
        try:
            for i, (name, _off, _len) in enumerate(slices):
                v = views[i]
                try:
                    self.backend.write_weight(name, 0, v)
                finally:
                    v = None
        finally:
            views = None
            js_slices = None


class GpuBufferSink:
    """Uploads into fresh GPU buffers it owns, one per tensor (``mode``: 'writeBuffer' | 'mapped').

    ``buffers`` maps tensor name -> GPUBuffer (JsProxy).  Used to measure the two upload paths
    and by the heap test; a backend that can adopt buffers may take them over.
    """

    def __init__(self, device, mode="writeBuffer"):
        self.device = device
        self.mode = mode
        self.buffers = {}
        self.upload_ms = 0.0

    async def write(self, helper, data, slices):
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        js_slices = to_js([list(s) for s in slices])
        res = helper.uploadTensors(self.device, data, js_slices, self.mode)
        js_slices = None
        self.upload_ms += float(res.ms)
        bufs = res.buffers
        for name, _o, _l in slices:
            self.buffers[name] = bufs.get(name)
        bufs = None
        res = None

    def destroy(self):
        for b in self.buffers.values():
            try:
                b.destroy()
            except Exception:  # noqa: BLE001
                pass
        self.buffers.clear()


class NullSink:
    """Drops the bytes (fetch + verify only)."""

    async def write(self, helper, data, slices):
        return None


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
    chunks: list = field(default_factory=list)
    plain_fetch_seconds: float | None = None
    mode: str = ""

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
            "requests": self.requests, "mode": self.mode,
            "plain_fetch_seconds": self.plain_fetch_seconds,
            "chunks": [dict(c.__dict__, mb_per_s=round(c.mb_per_s, 2)) for c in self.chunks],
        }


async def stream_chunks(manifest, chunks, sink, base_url="", parallel=DEFAULT_PARALLEL,
                        owner=None, opts=None, on_chunk=None):
    """Fetch, verify and upload ``chunks`` with at most ``parallel`` in flight.

    ``owner`` (tensor -> chunk id) says which chunk writes a tensor present in several;
    ``on_chunk(ChunkStat)`` is called as each chunk lands.  Returns :class:`LoadStats`.
    """
    from pyodide.ffi import to_js  # type: ignore[import-not-found]

    helper = js_helper()
    helper.resetTotals()
    stats = LoadStats(mode=getattr(sink, "mode", type(sink).__name__))
    stats.wasm_heap_before = wasm_heap_bytes()
    stats.js_heap_before = js_heap_bytes()
    js_opts = to_js(opts or {}, dict_converter=_js_object)
    sem = asyncio.Semaphore(max(1, parallel))
    t0 = time.perf_counter()

    async def one(chunk):
        async with sem:
            url = absolute_url(base_url, manifest["files"][chunk["file"]]["url"])
            reqs = to_js(plan_requests(chunk["ranges"]))
            try:
                res = await helper.fetchChunk(url, reqs, chunk["bytes"], chunk.get("sha256") or "",
                                              chunk["id"], chunk.get("layer"), js_opts)
            finally:
                reqs = None
            data, st = res.data, res.stats
            slices = [s for s in tensor_slices(chunk)
                      if owner is None or owner.get(s[0]) == chunk["id"]]
            tu = time.perf_counter()
            try:
                await sink.write(helper, data, slices)
            finally:
                data = None
                res = None
            cs = ChunkStat(id=chunk["id"], layer=chunk.get("layer"), bytes=int(chunk["bytes"]),
                           ms=float(st.ms), ms_fetch=float(st.msFetch), ms_digest=float(st.msDigest),
                           ms_upload=(time.perf_counter() - tu) * 1e3, requests=int(st.requests),
                           resumes=int(st.resumes), errors=int(st.errors), refetches=int(st.refetches),
                           verified=bool(st.verified))
            st = None
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


async def plain_fetch_seconds(manifest, chunks, base_url=""):
    """The same bytes with a plain ``fetch(...).arrayBuffer()`` each, sequentially."""
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    helper = js_helper()
    total = 0.0
    for c in chunks:
        url = absolute_url(base_url, manifest["files"][c["file"]]["url"])
        reqs = to_js(plan_requests(c["ranges"]))
        r = await helper.plainFetch(url, reqs)
        total += float(r.ms) / 1e3
        reqs = None
        r = None
    return total


async def fetch_json(url):
    """A small JSON document (a manifest) as Python data."""
    import json

    import js  # type: ignore[import-not-found]
    resp = await js.fetch(url)
    if not resp.ok:
        raise OSError(f"GET {url}: HTTP {resp.status}")
    return json.loads(str(await resp.text()))


async def load_manifest(model, base_url=""):
    return await fetch_json(absolute_url(base_url, f"/models/{model}/manifest.json"))


# --------------------------------------------------------------------------- measuring

JS_RAW_DEVICE = r"""
(async () => {
  if (!navigator.gpu) throw new Error('no navigator.gpu');
  const a = await navigator.gpu.requestAdapter();
  if (!a) throw new Error('no WebGPU adapter');
  return await a.requestDevice({ requiredLimits: { maxBufferSize: a.limits.maxBufferSize,
    maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize } });
})()
"""


async def raw_device():
    """A bare GPUDevice (JsProxy) with the adapter's largest buffer limits, for measurements."""
    from pyodide.code import run_js  # type: ignore[import-not-found]
    return await run_js(JS_RAW_DEVICE)


def tail_tensor_names(manifest, split, embed=None, head=True):
    """The tensor names the edge needs for layers [split, N) (+ embedding at split 0, + head)."""
    from ..arch import build_model
    names = {t["name"] for c in manifest["chunks"] for t in c["tensors"]}
    model = build_model(manifest["config"], names)
    embed = (split == 0) if embed is None else embed
    return model.tensors(model.ops(split, model.n_layers, embed=embed, head=head))


async def bench(model, split=0, mode="writeBuffer", parallel=DEFAULT_PARALLEL, base_url="",
                plain=True, warmup=True, device=None, keep=False):
    """Stream the edge's weights for ``split`` into fresh GPU buffers and measure.

    Returns LoadStats.as_dict() plus ``plain_fetch_seconds`` (the same bytes through a plain
    ``fetch().arrayBuffer()``).  The buffers are destroyed afterwards unless ``keep``.
    """
    manifest = await load_manifest(model, base_url)
    needed = tail_tensor_names(manifest, split)
    chunks, owner = select_chunks(manifest, needed=needed)
    dev = device if device is not None else await raw_device()
    if warmup:       # exercise every code path once (imports, JIT, first allocations)
        small = min(chunks, key=lambda c: c["bytes"])
        s0 = GpuBufferSink(dev, mode)
        await stream_chunks(manifest, [small], s0, base_url, owner=owner)
        s0.destroy()
    sink = GpuBufferSink(dev, mode)
    st = await stream_chunks(manifest, chunks, sink, base_url, parallel=parallel, owner=owner)
    if plain:
        st.plain_fetch_seconds = await plain_fetch_seconds(manifest, chunks, base_url)
    out = st.as_dict()
    out["upload_ms"] = round(sink.upload_ms, 1)
    out["tensors"] = len(sink.buffers)
    out["split"] = split
    if not keep:
        sink.destroy()
    return out
