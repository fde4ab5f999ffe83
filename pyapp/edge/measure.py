"""Measurements of the weight streamer (benchmarks and the browser tests, not the product path):
stream a split's weights into fresh GPU buffers through either upload path, and time a plain
``fetch().arrayBuffer()`` of the same bytes.  The JS half is ``measure.js``.
"""
from __future__ import annotations

from . import stream
from .jsfiles import load


class GpuBufferSink:
    """Uploads into fresh GPU buffers it owns, one per tensor (``mode``: 'writeBuffer' | 'mapped');
    ``buffers`` maps tensor name -> GPUBuffer (JsProxy)."""

    def __init__(self, device, mode="writeBuffer"):
        self.device = device
        self.mode = mode
        self.buffers = {}
        self.upload_ms = 0.0

    async def write(self, helper, data, slices):
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        res = load("measure").uploadTensors(self.device, data, to_js([list(s) for s in slices]), self.mode)
        self.upload_ms += float(res.ms)
        bufs = res.buffers
        for name, _o, _l in slices:
            self.buffers[name] = bufs.get(name)

    def destroy(self):
        for b in self.buffers.values():
            b.destroy()
        self.buffers.clear()


async def raw_device():
    """A bare GPUDevice (JsProxy) with the adapter's largest buffer limits."""
    return await load("measure").rawDevice()


async def plain_fetch_seconds(manifest, chunks, base_url=""):
    """The same bytes with a plain ``fetch(...).arrayBuffer()`` each, sequentially."""
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    total = 0.0
    for c in chunks:
        files = [(c["file"], c["ranges"])] if c.get("file") else [(p["file"], p["ranges"]) for p in stream.chunk_pieces(c)]
        for f, ranges in files:
            url = stream.absolute_url(base_url, manifest["files"][f]["url"])
            r = await load("measure").plainFetch(url, to_js(stream.plan_requests(ranges)))
            total += float(r.ms) / 1e3
    return total


def tail_tensor_names(manifest, split, embed=None, head=True):
    """The tensor names the edge needs for layers [split, N) (+ embedding at split 0, + head)."""
    from ..arch import build_model
    names = {t["name"] for c in manifest["chunks"] for t in c["tensors"]}
    model = build_model(manifest["config"], names)
    embed = (split == 0) if embed is None else embed
    return model.tensors(model.ops(split, model.n_layers, embed=embed, head=head))


async def bench(model, split=0, mode="writeBuffer", parallel=stream.DEFAULT_PARALLEL, base_url="",
                plain=True, warmup=True, device=None, keep=False):
    """Stream the edge's weights for ``split`` into fresh GPU buffers and measure.

    Returns LoadStats.as_dict() plus ``mode``, ``upload_ms``, ``tensors`` and
    ``plain_fetch_seconds`` (the same bytes through a plain ``fetch().arrayBuffer()``).  The
    buffers are destroyed afterwards unless ``keep``.
    """
    manifest = await stream.load_manifest(model, base_url)
    chunks, owner = stream.select_chunks(manifest, needed=tail_tensor_names(manifest, split))
    dev = device if device is not None else await raw_device()
    if warmup:       # exercise every code path once (imports, JIT, first allocations)
        small = min(chunks, key=lambda c: c["bytes"])
        s0 = GpuBufferSink(dev, mode)
        await stream.stream_chunks(manifest, [small], s0, base_url, owner=owner)
        s0.destroy()
    sink = GpuBufferSink(dev, mode)
    st = await stream.stream_chunks(manifest, chunks, sink, base_url, parallel=parallel, owner=owner)
    out = st.as_dict()
    out.update(mode=mode, upload_ms=round(sink.upload_ms, 1), tensors=len(sink.buffers), split=split,
               plain_fetch_seconds=await plain_fetch_seconds(manifest, chunks, base_url) if plain else None)
    if not keep:
        sink.destroy()
    return out
