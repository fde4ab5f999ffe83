"""The native binding: wgpu-py (wgpu-native), whose API mirrors WebGPU (implements device.Device)."""
from __future__ import annotations

import os
import time

from .device import PACKED_DOT, Device, GpuError


def _packed_dot(wgpu, device) -> bool:
    """The WGSL language feature packed_4x8_integer_dot_product (dot4I8Packed, pack4xI8; the
    `sgq` GEMV): wgpu-py's `wgsl_language_features` is empty in 0.32 though naga compiles it
    (no `requires` needed), so a one-line shader is compiled to ask."""
    if PACKED_DOT in (getattr(wgpu.gpu, "wgsl_language_features", None) or ()):
        return True
    try:
        device.create_shader_module(code="@compute @workgroup_size(1) fn main() { "
                                         "let d = dot4I8Packed(pack4xI8(vec4i(1)), 0x01010101u); }")
        return True
    except Exception:  # noqa: BLE001  (a validation error: the compiler lacks the builtins)
        return False


class NativeDevice(Device):
    kind = "native"

    def __init__(self, adapter, device):
        import wgpu

        self.wgpu = wgpu
        self.adapter = adapter
        self.device = device
        lim = device.limits
        self.limits = {
            "max_storage_binding": int(lim["max-storage-buffer-binding-size"]),
            "max_buffer": int(lim["max-buffer-size"]),
            "max_workgroups": int(lim["max-compute-workgroups-per-dimension"]),
            "max_storage_buffers": int(lim["max-storage-buffers-per-shader-stage"]),
            "max_workgroup_storage": int(lim["max-compute-workgroup-storage-size"]),
        }
        feats = set(device.features)
        self.features = set()
        if "subgroup" in feats:
            self.features.add("subgroups")
        if "shader-f16" in feats:
            self.features.add("shader-f16")
        if "timestamp-query" in feats:
            self.features.add("timestamp-query")
        if _packed_dot(wgpu, device):
            self.features.add(PACKED_DOT)
        info = dict(adapter.info)
        self.info = {"vendor": info.get("vendor", ""), "architecture": info.get("architecture", ""),
                     "device": info.get("device", ""), "description": info.get("description", ""),
                     "adapter_type": info.get("adapter_type", ""),
                     "backend": info.get("backend_type", "")}
        self.subgroup_enable = ""   # wgpu-native takes subgroup builtins without `enable`
        self.crossings = 0
        self._pipelines = {}
        U = wgpu.BufferUsage
        self._usage = {"storage": U.STORAGE | U.COPY_SRC | U.COPY_DST,
                       "uniform": U.UNIFORM | U.COPY_DST,
                       # mapped in place: a read waits only for the submit that copied into it
                       # (queue.read_buffer submits its own copy, which in pipelined decode
                       # queued behind the step after, so the GPU idled while the host encoded)
                       "readback": U.MAP_READ | U.COPY_DST}
        self._map_read = wgpu.MapMode.READ
        self._mappable = int(U.MAP_READ)
        self._submit_index, self._wait_index, self._pass_calls = _native_calls(device)
        self._written_by = {}       # readback buffer -> the submission index that copies into it
        self._ahead = None          # (recording, copies, command buffer) encoded for the next submit
        # how a readback waits: "index" (the submission that wrote it, then map_sync) or
        # "map_sync" (wgpu-py's: every submission). H200 run 13d, pipelined: 7B 149.5 -> 193.0
        # tok/s, 1B 421.9 -> 515.3; step by step within 5 %. (Non-blocking polls after the
        # wait instead of map_sync's poll thread measured 172.8 / 505.9: not kept.)
        self.wait_mode = "index"

    @classmethod
    def create(cls, power_preference="high-performance", max_limits=True, limits=None):
        """Request an adapter and a device with the adapter's largest buffer limits
        (or `limits`: {"max_buffer_size": .., "max_storage_buffer_binding_size": ..})."""
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        import wgpu

        try:
            ad = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"no WebGPU adapter: {e}") from e
        if ad is None:
            raise GpuError("no WebGPU adapter")
        lim = ad.limits
        req = {}
        if max_limits:
            req = {"max_buffer_size": lim["max-buffer-size"],
                   "max_storage_buffer_binding_size": lim["max-storage-buffer-binding-size"],
                   "max_storage_buffers_per_shader_stage": min(lim["max-storage-buffers-per-shader-stage"], 10),
                   "max_compute_workgroup_storage_size": lim["max-compute-workgroup-storage-size"]}
        if limits:
            req.update(limits)
        feats = [f for f in ("subgroup", "shader-f16", "timestamp-query") if f in ad.features]
        dev = ad.request_device_sync(required_features=feats, required_limits=req)
        return cls(ad, dev)

    # ------------------------------------------------------------------ resources
    def create_buffer(self, size, usage="storage"):
        size = max(4, (int(size) + 3) // 4 * 4)
        try:
            return self.device.create_buffer(size=size, usage=self._usage[usage])
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"create_buffer({size}, {usage}): {e}") from e

    def write(self, buf, offset, data):
        mv = memoryview(data).cast("B")
        if len(mv) % 4:
            mv = memoryview(bytes(mv) + b"\0" * (4 - len(mv) % 4))
        try:
            self.device.queue.write_buffer(buf, offset, mv)
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"writeBuffer: {e}") from e

    def pipeline(self, wgsl):
        p = self._pipelines.get(wgsl)
        if p is not None:
            return p
        try:
            mod = self.device.create_shader_module(code=wgsl)
            p = self.device.create_compute_pipeline(layout="auto", compute={"module": mod, "entry_point": "main"})
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"WGSL pipeline failed: {e}\n--- source ---\n{_numbered(wgsl)}") from e
        self._pipelines[wgsl] = p
        return p

    def bind_group(self, pipeline, entries):
        ents = []
        for b, r in sorted(entries.items()):
            if isinstance(r, tuple):
                buf, off, size = r
                ents.append({"binding": b, "resource": {"buffer": buf, "offset": off, "size": size}})
            else:
                ents.append({"binding": b, "resource": {"buffer": r, "offset": 0, "size": r.size}})
        try:
            return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=ents)
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"bind group: {e}") from e

    # ------------------------------------------------------------------ execution
    def record(self, dispatches):
        return list(dispatches)

    def encode(self, recording, a=0, b=None):
        """A command encoder holding one compute pass of `recording[a:b]`. Through wgpu-native's
        own calls where they can be reached: three a dispatch, so wgpu-py's per-call Python
        (argument checks, a keep-alive list, an ffi array per set_bind_group) was a quarter
        of the encoding (lavapipe host: 0.46 -> 0.35 ms for a SmolLM2 token's 154 dispatches);
        the pass keeps its pipelines and bind groups alive inside wgpu-native."""
        enc = self.device.create_command_encoder()
        ps = enc.begin_compute_pass()
        part = recording if a == 0 and b is None else recording[a:b]
        if self._pass_calls is None:
            for pipe, group, gx, gy, gz in part:
                ps.set_pipeline(pipe)
                ps.set_bind_group(0, group)
                ps.dispatch_workgroups(gx, gy, gz)
        else:
            set_pipeline, set_group, dispatch, null = self._pass_calls
            h = ps._internal
            for pipe, group, gx, gy, gz in part:
                set_pipeline(h, pipe._internal)
                set_group(h, 0, group._internal, 0, null)
                dispatch(h, gx, gy, gz)
        ps.end()
        return enc

    def command_buffer(self, recording, a=0, b=None, copies=()):
        """The finished command buffer of one chunk: `recording[a:b]`, then `copies`."""
        enc = self.encode(recording, a, b)
        for src, soff, dst, doff, size in copies:
            enc.copy_buffer_to_buffer(src, soff, dst, doff, size)
        return enc.finish()

    def submit_buffer(self, cb, copies=()):
        """queue.submit of one command buffer; a readback buffer it copies into remembers the
        submission's index (what `read` waits for: the last chunk's, which holds the copy)."""
        if self._submit_index is None:
            self.device.queue.submit([cb])
            return
        idx = self._submit_index(cb)
        for _s, _so, dst, _do, _n in copies:
            if dst.usage & self._mappable:
                self._written_by[dst] = idx

    def chunk_buffers(self, recording, copies=(), ends=None):
        """(command buffer, its copies) of each chunk of `recording` (`ends`: each chunk's end
        index; None: one chunk), the copies in the last; lazily, one chunk encoded per step."""
        a, ends = 0, ends or [None]
        for i, e in enumerate(ends):
            cp = copies if i == len(ends) - 1 else ()
            yield self.command_buffer(recording, a, e, cp), cp
            a = e

    def submit(self, recording, writes=(), copy=None, ends=None, ahead=False):
        """Each chunk is encoded and submitted before the next is encoded, so the GPU runs
        one while the host encodes the next; the copies ride in the last. A command buffer
        encoded ahead for this recording and these copies goes in one submit instead."""
        try:
            for buf, off, data in writes:
                self.write(buf, off, data)
            copies = [] if copy is None else [copy] if isinstance(copy, tuple) else list(copy)
            pre, self._ahead = self._ahead, None
            if pre is not None and pre[0] is recording and pre[1] == copies:
                self.submit_buffer(pre[2], copies)
                n = 1
            else:
                n = 0
                for cb, cp in self.chunk_buffers(recording, copies, ends):
                    self.submit_buffer(cb, cp)
                    n += 1
            if ahead:     # one chunk: it is submitted whole, nothing left to overlap
                self._ahead = (recording, copies, self.command_buffer(recording, copies=copies))
            return n
        except GpuError:
            raise
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"submit: {e}") from e

    def read(self, buf, offset, size):
        try:
            if buf.usage & self._mappable:
                self._map(buf, offset, (size + 3) // 4 * 4)
                try:
                    return bytes(buf.read_mapped(offset, size))
                finally:
                    buf.unmap()
            return bytes(self.device.queue.read_buffer(buf, offset, size))
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"readback: {e}") from e

    def _map(self, buf, offset, size):
        """Map a readback buffer once the submission that wrote it is done, and no later one:
        wgpu-py's map_sync polls the device until *every* submission is done (in pipelined
        decode, reading token n waited for step n+1 and the GPU idled while the host encoded
        n+2). Here: wait for that submission's index first; map_sync then finds it done."""
        idx = self._written_by.pop(buf, None)
        if idx is None or self.wait_mode == "map_sync":
            buf.map_sync(self._map_read, offset, size)
            return
        self._wait_index(idx)
        buf.map_sync(self._map_read, offset, size)

    async def read_async(self, buf, offset, size):
        return self.read(buf, offset, size)

    def now(self):
        return time.perf_counter()


def _native_calls(device):
    """What wgpu-py does not expose, from wgpu-native itself: (submit(command_buffer) ->
    submission index, wait(index), the compute pass's (set pipeline, set bind group, dispatch,
    NULL)) through wgpuQueueSubmitForIndex / wgpuDevicePoll(wait, &index) /
    wgpuComputePassEncoder*; Nones where wgpu-py's internals differ (then its own methods)."""
    try:
        from wgpu.backends.wgpu_native._api import ffi, libf
        qid, did = device.queue._internal, device._internal
        pass_calls = (libf.wgpuComputePassEncoderSetPipeline, libf.wgpuComputePassEncoderSetBindGroup,
                      libf.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL)
    except (ImportError, AttributeError):
        return None, None, None

    def submit(cb):
        arr = ffi.new("WGPUCommandBuffer[]", [cb._internal])
        return libf.wgpuQueueSubmitForIndex(qid, 1, arr)

    def wait(idx):
        libf.wgpuDevicePoll(did, True, ffi.new("WGPUSubmissionIndex *", idx))
    return submit, wait, pass_calls


def _numbered(src):
    return "\n".join(f"{i + 1:4d} {s}" for i, s in enumerate(src.splitlines()))
