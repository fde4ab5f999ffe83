"""The device interface both bindings implement: `native.NativeDevice` (wgpu-py) and
`browser.BrowserDevice` (Pyodide FFI over `navigator.gpu`).

Everything the executor (`backend.py`), the lowering (`lower.py`) and the autotune
(`autotune.py`) call on a device is listed here; nothing else is used.  Buffers,
pipelines, bind groups and recordings are opaque handles of the binding.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


# the WGSL language feature of dot4I8Packed / pack4xI8 (the `sgq` GEMV), as both bindings record
# it in `Device.features` (browser: navigator.gpu.wgslLanguageFeatures; native: naga compiles it)
PACKED_DOT = "packed_4x8_integer_dot_product"


class GpuError(RuntimeError):
    """A WebGPU validation/out-of-memory error, a shader compilation error or a
    lost device, carrying the implementation's message."""


Buffer = Any        # GPUBuffer (a JS proxy in the browser)
Entries = dict      # {binding: buffer | (buffer, offset, size)}
Dispatch = tuple    # (pipeline, bind group, gx, gy, gz)


@runtime_checkable
class Device(Protocol):
    kind: str                    # "native" | "browser"
    limits: dict                 # max_storage_binding, max_buffer, max_workgroups, max_storage_buffers, max_workgroup_storage
    features: set                # "subgroups", "shader-f16", "timestamp-query", and the WGSL language
                                 # feature "packed_4x8_integer_dot_product" (dot4I8Packed)
    info: dict                   # vendor, architecture, device, description, ...
    subgroup_enable: str         # the WGSL directive subgroup kernels need ("" if none)
    crossings: int               # Python->JS calls made so far (0 natively)

    def create_buffer(self, size: int, usage: str = "storage") -> Buffer:
        """A buffer of `size` bytes (rounded up to 4); usage "storage" | "uniform" | "readback"."""

    def write(self, buf: Buffer, offset: int, data) -> None:
        """queue.writeBuffer; `data` is buffer-protocol bytes or a JS typed array."""

    def pipeline(self, wgsl: str) -> Any:
        """The compute pipeline of `wgsl` (layout "auto", entry "main"), cached by source."""

    def bind_group(self, pipeline, entries: Entries) -> Any:
        """Bind group 0 of `pipeline` over `entries`."""

    def record(self, dispatches: list) -> Any:
        """A replayable recording of [(pipeline, group, gx, gy, gz)]."""

    def submit(self, recording, writes=(), copy=None, ends=None, ahead=False) -> int:
        """Writes [(buf, off, data)], then `recording` replayed in one compute pass and one
        queue.submit per chunk (`ends`: each chunk's end index, from `chunk_ends`; None: one
        chunk), the optional buffer copies (src, soff, dst, doff, n) after the last pass.
        `ahead`: then encode the same recording and copies again, unsubmitted, while the GPU
        runs this one; the next submit of them sends that command buffer instead of encoding
        (a step-by-step token's next step: its encoding leaves the critical path). Writes are
        queued before the submit that follows them whenever its commands were encoded.
        Returns the number of queue.submit calls made."""

    def read(self, buf: Buffer, offset: int, size: int) -> bytes:
        """Blocking readback (native only; the browser raises GpuError)."""

    async def read_async(self, buf: Buffer, offset: int, size: int) -> bytes:
        """Readback awaiting mapAsync (both bindings)."""

    def now(self) -> float:
        """Seconds from a monotonic clock (autotune timing)."""


def chunk_ends(n: int, rule) -> list | None:
    """Where a recording of `n` dispatches is cut into submits, as each chunk's end index
    (the last is n), under `rule` = (first, rest): `first` dispatches, then `rest` each
    (rest 0: all the others at once); None / 0 / a recording no longer than `first`: None
    (one submit). A small first chunk starts the GPU while the host encodes the rest."""
    if not rule:
        return None
    first, rest = rule if isinstance(rule, (tuple, list)) else (rule, rule)
    if first <= 0 or n <= first:
        return None
    ends = list(range(first, n, rest)) if rest > 0 else [first]
    return ends + [n]


def cpu_adapter(info: dict) -> bool:
    """A CPU implementation of WebGPU (lavapipe / llvmpipe, SwiftShader, WARP) from either
    binding's `info`: where a plan trades GPU parallelism for fewer dispatches, it pays only here."""
    if info.get("adapter_type", "").upper() == "CPU" or info.get("is_fallback"):
        return True
    names = " ".join(str(info.get(k, "")) for k in ("vendor", "architecture", "device", "description")).lower()
    return any(n in names for n in ("llvmpipe", "lavapipe", "swiftshader", "warp"))
