"""The device interface both bindings implement (documented here, duck-typed).

    limits            dict: max_storage_binding, max_buffer, max_workgroups
    features          set of feature names ("subgroups", "shader-f16", ...)
    info              dict: vendor, architecture, device, description
    kind              "native" | "browser"
    crossings         Python->JS calls made so far (0 natively)
    create_buffer(size, usage) -> buffer      usage: "storage" | "uniform" | "readback"
    write(buffer, offset, data)               queue.writeBuffer; data as the binding takes it
    pipeline(wgsl) -> pipeline                compute pipeline, layout "auto", entry "main"
    bind_group(pipeline, entries) -> group    entries: {binding: buffer | (buffer, offset, size)}
    record(dispatches) -> recording           dispatches: [(pipeline, group, gx, gy, gz)]
    submit(recording, writes=(), copy=None)   writes [(buf, off, data)], one encoder,
                                              one compute pass, optional buffer copy, one submit
    read(buffer, offset, size) -> bytes       (native, blocking)
    await read_async(buffer, offset, size)    (both; a promise in the browser)
"""


class GpuError(RuntimeError):
    """A WebGPU validation/out-of-memory error, a shader compilation error or a
    lost device, carrying the implementation's message."""


USAGE_NAMES = ("storage", "uniform", "readback")
