"""The browser binding: Pyodide's FFI over `navigator.gpu` (the product).

    dev = await pyapp.gpu.browser.request_device()
    be = GpuBackend(dev, model, start, stop, embed, head, dtype, shapes=..., dtypes=...)
    for name, nbytes in be.weight_layout(): be.write_weight(name, off, js_uint8array)
    tok = await be.step_async(ids=[...], cache=cache, params=SamplingParams(), n=0)

Few FFI crossings: everything per step happens inside the JS helper (browser.js), so a
decode step is O(1) Python->JS calls whatever the number of layers:
  1 to_js of the step's writes (params + ids/x) and chunk ends, 1 `submit` (writes,
  then per chunk of the recorded dispatch array one encoder, compute pass and
  queue.submit, the readback copy in the last), 1 `readU32` (mapAsync + read, awaited).
A dispatch list is turned into a JS array once (one to_js) and replayed.
`crossings` counts every Python->JS call this binding makes.

Errors: validation and out-of-memory errors are caught by error scopes around
each submit and by an `uncapturederror` listener (shader compilation messages
included); device loss is recorded from `device.lost`.  Any of them is raised
as GpuError at the next readback (or `await dev.check()`), never left as silent
garbage.
"""
from __future__ import annotations

import time

from .device import Device, GpuError

_helper = None


def helper():
    """The JS helper object of browser.js, evaluated once per page."""
    global _helper
    if _helper is None:
        from importlib import resources

        from pyodide.code import run_js  # type: ignore[import-not-found]
        _helper = run_js(resources.files(__package__).joinpath("browser.js").read_text(encoding="utf-8"))
    return _helper


async def request_device(power_preference="high-performance", limits="max"):
    """Open the page's WebGPU device; adapter features/limits/info recorded.  `limits`: "max"
    asks for the adapter's largest buffer and binding sizes (big tensors need fewer shards);
    "default" keeps WebGPU's (256 MiB buffers, 128 MiB bindings), as a small mobile GPU has."""
    H = helper()
    try:
        r = await H.requestDevice(power_preference, limits == "max")
    except Exception as e:  # noqa: BLE001
        raise GpuError(str(e)) from e
    return BrowserDevice(H, r)


class BrowserDevice(Device):
    kind = "browser"

    def __init__(self, H, r):
        self.H = H
        self.device = r.device
        self.state = r.state
        self.features = set(r.features.to_py())
        self.limits = {k: int(v) for k, v in r.limits.to_py().items()}
        self.info = dict(r.info.to_py())
        self.subgroup_enable = "enable subgroups;" if "subgroups" in self.features else ""
        self.crossings = 4
        self._pipelines = {}
        from pyodide.ffi import to_js  # type: ignore[import-not-found]
        self._to_js = to_js

    def _js(self, x):
        self.crossings += 1
        return self._to_js(x)

    # ------------------------------------------------------------------ resources
    def create_buffer(self, size, usage="storage"):
        self.crossings += 1
        return self.H.createBuffer(self.device, max(4, (int(size) + 3) // 4 * 4), usage)

    def _data(self, data):
        if hasattr(data, "byteLength"):         # a JS typed array / ArrayBuffer: passed as is
            return data
        return self._js(memoryview(data).cast("B"))

    def write(self, buf, offset, data):
        d = self._data(data)
        self.crossings += 1
        self.H.write(self.device, buf, offset, d)

    def pipeline(self, wgsl):
        p = self._pipelines.get(wgsl)
        if p is None:
            self.crossings += 1
            p = self._pipelines[wgsl] = self.H.pipeline(self.device, wgsl)
        return p

    def bind_group(self, pipeline, entries):
        ents = []
        for b, r in sorted(entries.items()):
            if isinstance(r, tuple):
                ents.append([b, r[0], r[1], r[2]])
            else:
                ents.append([b, r, 0, 0])
        js_ents = self._js(ents)
        self.crossings += 1
        return self.H.bindGroup(self.device, pipeline, js_ents)

    # ------------------------------------------------------------------ execution
    def record(self, dispatches):
        return self._js([list(d) for d in dispatches])

    def submit(self, recording, writes=(), copy=None, ends=None, ahead=False):
        copies = [] if copy is None else [copy] if isinstance(copy, tuple) else list(copy)
        w = [[b, o, d if hasattr(d, "byteLength") else memoryview(d).cast("B")] for b, o, d in writes]
        args = self._js([w, [list(c) for c in copies], list(ends or ())])
        self.crossings += 1
        return int(self.H.submit(self.device, self.state, recording, args[0], args[1], args[2], bool(ahead)))

    async def read_u32(self, buf, offset=0):
        self.crossings += 1
        try:
            return int(await self.H.readU32(self.device, self.state, buf, offset))
        except Exception as e:  # noqa: BLE001
            raise GpuError(str(e)) from e

    async def read_async(self, buf, offset, size):
        if size == 4:
            import struct
            return struct.pack("<I", await self.read_u32(buf, offset))
        self.crossings += 2
        try:
            u8 = await self.H.read(self.device, self.state, buf, offset, size)
        except Exception as e:  # noqa: BLE001
            raise GpuError(str(e)) from e
        return u8.to_py()

    def read(self, buf, offset, size):
        raise GpuError("the browser binding cannot block: use `await read_async(...)` / `step_async`")

    async def check(self):
        """Raise GpuError for any error or device loss so far."""
        self.crossings += 1
        try:
            await self.H.check(self.device, self.state)
        except Exception as e:  # noqa: BLE001
            raise GpuError(str(e)) from e

    def now(self):
        return time.perf_counter()
