"""The browser binding: Pyodide's FFI over `navigator.gpu` (the product).

    dev = await pyapp.gpu.browser.request_device()
    be = GpuBackend(dev, model, start, stop, embed, head, dtype, shapes=..., dtypes=...)
    for name, nbytes in be.weight_layout(): be.write_weight(name, off, js_uint8array)
    tok = await be.step_async(ids=[...], cache=cache, params=SamplingParams(), n=0)

Few FFI crossings: everything per step happens inside a small JS helper, so a
decode step is O(1) Python->JS calls whatever the number of layers:
  1 to_js of the step's writes (params + ids/x), 1 `submit` (writes, one
  encoder, one compute pass replaying the recorded dispatch array, the readback
  copy, one queue.submit), 1 `readU32` (mapAsync + read, awaited).
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

from .device import GpuError

_HELPER_JS = r"""
(() => {
  const U = () => GPUBufferUsage;
  const H = {
    async requestDevice(powerPreference) {
      if (!globalThis.navigator || !navigator.gpu)
        throw new Error('navigator.gpu is missing (WebGPU is off or unsupported in this browser)');
      const adapter = await navigator.gpu.requestAdapter(powerPreference ? {powerPreference} : undefined);
      if (!adapter) throw new Error('navigator.gpu.requestAdapter() returned null');
      const want = ['subgroups', 'shader-f16', 'timestamp-query'].filter(f => adapter.features.has(f));
      const L = adapter.limits;
      const device = await adapter.requestDevice({requiredFeatures: want, requiredLimits: {
        maxBufferSize: L.maxBufferSize,
        maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
        maxStorageBuffersPerShaderStage: Math.min(L.maxStorageBuffersPerShaderStage, 10),
        maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize}});
      const info = adapter.info || {};
      const state = {lost: null, errors: []};
      device.lost.then(i => { state.lost = `WebGPU device lost (${i.reason}): ${i.message}`; });
      device.addEventListener('uncapturederror', e => { state.errors.push(e.error.constructor.name + ': ' + e.error.message); });
      return {device, state,
        features: [...device.features],
        limits: {max_storage_binding: device.limits.maxStorageBufferBindingSize,
                 max_buffer: device.limits.maxBufferSize,
                 max_workgroups: device.limits.maxComputeWorkgroupsPerDimension},
        info: {vendor: info.vendor || '', architecture: info.architecture || '', device: info.device || '',
               description: info.description || '',
               is_fallback: !!(adapter.isFallbackAdapter || info.isFallbackAdapter),
               subgroup_min_size: info.subgroupMinSize || 0, subgroup_max_size: info.subgroupMaxSize || 0}};
    },
    createBuffer(device, size, kind) {
      const u = U();
      const usage = kind === 'uniform' ? (u.UNIFORM | u.COPY_DST)
                  : kind === 'readback' ? (u.MAP_READ | u.COPY_DST)
                  : (u.STORAGE | u.COPY_SRC | u.COPY_DST);
      return device.createBuffer({size, usage});
    },
    write(device, buf, off, data) {
      let v = data;
      if (v instanceof ArrayBuffer) v = new Uint8Array(v);
      else if (!(v instanceof Uint8Array)) v = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      if (v.byteLength % 4) { const p = new Uint8Array((v.byteLength + 3) & ~3); p.set(v); v = p; }
      device.queue.writeBuffer(buf, off, v);
    },
    pipeline(device, code) {
      const module = device.createShaderModule({code});
      return device.createComputePipeline({layout: 'auto', compute: {module, entryPoint: 'main'}});
    },
    async compileErrors(device, code) {
      const module = device.createShaderModule({code});
      const info = await module.getCompilationInfo();
      return info.messages.filter(m => m.type === 'error').map(m => `line ${m.lineNum}:${m.linePos}: ${m.message}`).join('\n');
    },
    bindGroup(device, pipeline, entries) {
      return device.createBindGroup({layout: pipeline.getBindGroupLayout(0),
        entries: entries.map(([binding, buffer, offset, size]) =>
          ({binding, resource: size ? {buffer, offset, size} : {buffer}}))});
    },
    submit(device, state, rec, writes, copies) {
      for (const [buf, off, data] of writes) H.write(device, buf, off, data);
      device.pushErrorScope('out-of-memory');
      device.pushErrorScope('validation');
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (const [p, g, x, y, z] of rec) { pass.setPipeline(p); pass.setBindGroup(0, g); pass.dispatchWorkgroups(x, y, z); }
      pass.end();
      for (const [s, so, d, dof, n] of copies) enc.copyBufferToBuffer(s, so, d, dof, n);
      device.queue.submit([enc.finish()]);
      for (let i = 0; i < 2; i++)
        device.popErrorScope().then(e => { if (e) state.errors.push(e.constructor.name + ': ' + e.message); });
    },
    async readU32(device, state, buf, off) {
      await buf.mapAsync(GPUMapMode.READ, off, 4);
      const v = new Uint32Array(buf.getMappedRange(off, 4))[0];
      buf.unmap();
      H.raise(state);
      return v;
    },
    async read(device, state, buf, off, size) {
      let src = buf, soff = off;
      if (!(buf.usage & GPUBufferUsage.MAP_READ)) {
        src = device.createBuffer({size: (size + 3) & ~3, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(buf, off, src, 0, (size + 3) & ~3);
        device.queue.submit([enc.finish()]);
        soff = 0;
      }
      await src.mapAsync(GPUMapMode.READ, soff, (size + 3) & ~3);
      const out = new Uint8Array(src.getMappedRange(soff, (size + 3) & ~3).slice(0, size));
      src.unmap();
      if (src !== buf) src.destroy();
      H.raise(state);
      return out;
    },
    async check(device, state) { await device.queue.onSubmittedWorkDone(); H.raise(state); },
    raise(state) {
      if (state.lost) throw new Error(state.lost);
      if (state.errors.length) { const m = state.errors.join('\n'); state.errors.length = 0; throw new Error('WebGPU error: ' + m); }
    },
    now() { return performance.now() / 1000; },
  };
  return H;
})()
"""

_helper = None


def helper():
    global _helper
    if _helper is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        _helper = run_js(_HELPER_JS)
    return _helper


async def request_device(power_preference="high-performance"):
    """Open the page's WebGPU device; adapter features/limits/info recorded."""
    H = helper()
    try:
        r = await H.requestDevice(power_preference)
    except Exception as e:  # noqa: BLE001
        raise GpuError(str(e)) from e
    return BrowserDevice(H, r)


class BrowserDevice:
    kind = "browser"

    def __init__(self, H, r):
        self.H = H
        self.device = r.device
        self.state = r.state
        self.features = set(r.features.to_py())
        self.limits = {k: int(v) for k, v in r.limits.to_py().items()}
        self.info = dict(r.info.to_py())
        self.subgroup_enable = "enable subgroups;" if "subgroups" in self.features else ""
        smin, smax = self.info.get("subgroup_min_size"), self.info.get("subgroup_max_size")
        self.subgroup_size = smin if smin and smin == smax else None
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

    def submit(self, recording, writes=(), copy=None):
        copies = [] if copy is None else [copy] if isinstance(copy, tuple) else list(copy)
        w = [[b, o, d if hasattr(d, "byteLength") else memoryview(d).cast("B")] for b, o, d in writes]
        args = self._js([w, [list(c) for c in copies]])
        self.crossings += 1
        self.H.submit(self.device, self.state, recording, args[0], args[1])

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

    async def compile_errors(self, wgsl):
        return str(await self.H.compileErrors(self.device, wgsl))

    def now(self):
        return time.perf_counter()
