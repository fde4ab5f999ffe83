"""The WebGPU backend: one thin device interface, two bindings, shared kernels.

* `pyapp.gpu.native`  - wgpu-py (CPython: lavapipe in tests, a server GPU, the H100)
* `pyapp.gpu.browser` - Pyodide's FFI over `navigator.gpu` (the product)

Everything above the device (`pyapp.gpu.backend.GpuBackend`, the kernels in
`pyapp/kernels/`) is shared and stdlib-only.
"""
from .backend import GpuBackend, GpuKVCache  # noqa: F401
from .device import GpuError  # noqa: F401


def native_device(**kw):
    from .native import NativeDevice
    return NativeDevice.create(**kw)
