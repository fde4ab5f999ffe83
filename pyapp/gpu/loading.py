"""CPython loading of a store folder onto a GpuBackend (the native binding; the browser
streams the same bytes through pyapp/edge).  Each tensor keeps its stored format: a
`model.q4_1.safetensors` holds Q4_1 linears, a Q8_0 embedding and f32 norms, and every
one of them is uploaded as is (the kernels dequantize in registers)."""
from __future__ import annotations

from .. import formats
from ..weightfile import load_model_dir, read_safetensors_header, weight_files
from .device import GpuError


def file_layout(model_dir, tag: str):
    """({name: (file, header entry, data start)}, {name: value shape}, {name: format})."""
    files = weight_files(model_dir, tag)
    headers = {f: read_safetensors_header(f) for f in set(files.values())}
    where, shapes, dtypes = {}, {}, {}
    for n, f in files.items():
        header, data0 = headers[f]
        info = header[n]
        where[n] = (f, info, data0)
        dtypes[n] = info["format"]
        if info["format"] is not None:
            shapes[n] = formats.get(info["format"]).value_shape(info["shape"])
    return where, shapes, dtypes


def load_backend(cls, model_dir, tag="f32", start=0, stop=None, embed=None, head=None, device=None,
                 autotune=True, **kw):
    model = load_model_dir(model_dir, tag)
    where, shapes, dtypes = file_layout(model_dir, tag)
    need = model.tensors(model.ops(start, stop, embed=embed, head=head))
    bad = [n for n in need if dtypes[n] is None or formats.get(dtypes[n]).wgsl is None]
    if bad:
        raise GpuError(f"unsupported weight format for {bad[0]} ({where[bad[0]][1]['dtype']})")
    if device is None:
        from .native import NativeDevice
        device = NativeDevice.create()
    if autotune and "variants" not in kw:
        from .autotune import autotune_variants
        kw["variants"] = autotune_variants(device, model, shapes, dtypes)
    b = cls(device, model, start, stop, embed, head, tag, shapes=shapes, dtypes=dtypes, **kw)
    for f in sorted({where[n][0] for n in need}):
        with open(f, "rb") as fh:
            for n in need:
                nf, info, data0 = where[n]
                if nf != f:
                    continue
                b0, b1 = info["data_offsets"]
                fh.seek(data0 + b0)
                b.write_weight(n, 0, fh.read(b1 - b0))
    return b
