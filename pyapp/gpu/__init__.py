"""The WebGPU backend: one thin device interface, two bindings, shared kernels.

* `pyapp.gpu.native`  - wgpu-py (CPython: lavapipe in tests, a server GPU, the H100)
* `pyapp.gpu.browser` - Pyodide's FFI over `navigator.gpu` (the product)

Both implement `pyapp.gpu.device.Device`.  Everything above it is shared and stdlib-only:
the executor (`backend.py`), the op lowering (`lower.py`, `wgsl.py`), the autotune
(`autotune.py`) and the kernels in `pyapp/kernels/` (docs/gpu.md).
"""
from .backend import GpuBackend, GpuKVCache  # noqa: F401
from .device import GpuError  # noqa: F401


def native_device(**kw):
    from .native import NativeDevice
    return NativeDevice.create(**kw)
