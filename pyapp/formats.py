"""Weight formats as data: one entry per element type (ggml's `type_traits` is the model).

A *format* is how one tensor's values are stored: plain floats (`f32`, `f16`) or GGUF
blocks (`q4_1`, `q8_0`, ...).  Every place that chooses, names, sizes, decodes or loads a
weight reads this table: the store (which files a model has), the server (which formats a
manifest offers), the numpy backend (the decode, the reference) and the GPU backend (the
WGSL that loads a value).  Stdlib only at import: numpy is imported inside `decode`.

A model folder keeps one safetensors file per *weight file tag*: `model.safetensors` (f32),
`model.f16.safetensors`, and for GGUF sources `model.<tag>.safetensors` holding the original
blocks as uint8 rows, with each tensor's own format in the file's metadata (a Q4_1 GGUF keeps
its norms in f32 and some tensors in other block types).

Adding a format: one `WeightFormat(...)` entry below (block size, bytes, the numpy decode),
its WGSL loader in `pyapp/kernels/formats/`, and tests against the `gguf` package's
`dequantize` (docs/architecture.md, "Adding a weight format").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import UnsupportedFormat


@dataclass(frozen=True)
class WeightFormat:
    name: str                 # "f32", "f16", "q4_1", ...
    block: int                # values per block (1 for plain floats)
    block_bytes: int          # bytes per block
    st_dtype: str             # safetensors dtype of the stored tensor ("F32", "F16", "U8")
    ggml_type: int | None     # GGMLQuantizationType value (GGUF tensor type)
    decode_rows: Callable | None = None   # numpy: uint8 [rows, row_bytes] -> f32 [rows, cols]
    wgsl: str | None = None   # GPU loaders: pyapp/kernels/formats/<wgsl>.wgsl (value i) and
    #                           <wgsl>.vec4.wgsl (values 4i..4i+3); None: no GPU kernel

    @property
    def quantized(self) -> bool:
        return self.block > 1

    def row_bytes(self, cols: int) -> int:
        if cols % self.block:
            raise UnsupportedFormat(f"{self.name} rows hold whole blocks of {self.block} values; "
                                    f"a row of {cols} does not divide")
        return cols // self.block * self.block_bytes

    def nbytes(self, shape) -> int:
        shape = tuple(shape)
        rows = 1
        for s in shape[:-1]:
            rows *= s
        return rows * self.row_bytes(shape[-1] if shape else 1)

    def stored_shape(self, shape) -> tuple:
        """The safetensors shape of a tensor of `shape` values (uint8 [rows, row_bytes] for blocks)."""
        shape = tuple(shape)
        return (*shape[:-1], self.row_bytes(shape[-1])) if self.quantized else shape

    def value_shape(self, stored) -> tuple:
        """Inverse of `stored_shape`: the shape in values of a stored tensor."""
        stored = tuple(stored)
        if not self.quantized:
            return stored
        if stored[-1] % self.block_bytes:
            raise UnsupportedFormat(f"{self.name} rows are whole {self.block_bytes}-byte blocks; "
                                    f"{stored[-1]} bytes do not divide")
        return (*stored[:-1], stored[-1] // self.block_bytes * self.block)

    def decode(self, raw, shape):
        """The reference decode: stored bytes (numpy uint8 or float array) -> float32 `shape`."""
        import numpy as np

        shape = tuple(shape)
        if not self.quantized:
            a = np.asarray(raw)
            if a.dtype == np.uint8:
                a = a.view("<f4" if self.name == "f32" else "<f2")
            return a.astype(np.float32).reshape(shape)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, self.row_bytes(shape[-1]))
        return self.decode_rows(blocks).reshape(shape)


# ----------------------------------------------------------------------------- numpy decodes

def _blocks(rows, nbytes):
    """uint8 [R, row_bytes] -> uint8 [R, nblocks, nbytes]."""
    return rows.reshape(rows.shape[0], -1, nbytes)


def _f16(b, lo):
    import numpy as np
    return np.ascontiguousarray(b[..., lo:lo + 2]).view("<f2").astype(np.float32)  # [R, nb, 1]


def _decode_q8_0(rows):
    # block: f16 d, 32 x int8 q;  x = d * q
    import numpy as np
    b = _blocks(rows, 34)
    d = _f16(b, 0)
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.float32)
    return (d * q).reshape(rows.shape[0], -1)


def _decode_q4_1(rows):
    # block: f16 d, f16 m, 16 bytes of nibbles; value j < 16 is the low nibble of byte j,
    # value 16 + j the high nibble;  x = d * q + m
    import numpy as np
    b = _blocks(rows, 20)
    d, m = _f16(b, 0), _f16(b, 2)
    qs = b[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    return (d * q + m).reshape(rows.shape[0], -1)


def _decode_q4_0(rows):
    # block: f16 d, 16 bytes of nibbles;  x = d * (q - 8)
    import numpy as np
    b = _blocks(rows, 18)
    d = _f16(b, 0)
    qs = b[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0
    return (d * q).reshape(rows.shape[0], -1)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("f32", 1, 4, "F32", 0, wgsl="f32"),
    WeightFormat("f16", 1, 2, "F16", 1, wgsl="f16"),
    WeightFormat("q4_0", 32, 18, "U8", 2, _decode_q4_0),
    WeightFormat("q4_1", 32, 20, "U8", 3, _decode_q4_1, wgsl="q4_1"),
    WeightFormat("q8_0", 32, 34, "U8", 8, _decode_q8_0, wgsl="q8_0"),
)}

# GGUF tensor type names (gguf.GGMLQuantizationType.name) -> format name
GGML_NAMES = {f.name.upper(): f.name for f in FORMATS.values()}

# formats a whole model's weights are kept in (a weight file per tag); "f32" always exists
FILE_TAGS = ("f32", "f16", "q4_1", "q8_0")
# the weight files both backends run (numpy decodes at load, WGSL loaders in kernels/formats/),
# so the server offers them in manifests
SERVED_TAGS = ("f32", "f16", "q4_1", "q8_0")


def get(name: str) -> WeightFormat:
    """The entry for `name` (also accepts "float32"/"float16" and GGUF type names)."""
    key = {"float32": "f32", "float16": "f16"}.get(str(name).lower(), str(name).lower())
    f = FORMATS.get(key)
    if f is None:
        raise UnsupportedFormat(f"weight format {name!r} is not supported "
                                f"(supported: {', '.join(FORMATS)})")
    return f


def tensor_format(st_dtype: str, ggml_name: str | None = None) -> str | None:
    """The format of a stored tensor: the ggml type a block file's metadata names for it, else
    its safetensors float dtype (F32/F16); None for anything else (integer buffers)."""
    if ggml_name and ggml_name.upper() in GGML_NAMES:
        return GGML_NAMES[ggml_name.upper()]
    return {"F32": "f32", "F16": "f16"}.get(st_dtype)


def weight_file_name(tag: str) -> str:
    """The safetensors file of weight file tag `tag` inside a model folder."""
    return "model.safetensors" if tag == "f32" else f"model.{tag}.safetensors"


def check_tag(tag) -> str:
    """`tag` if it names a weight file format, else a one-line UnsupportedFormat."""
    if not isinstance(tag, str) or tag not in FILE_TAGS:
        raise UnsupportedFormat(f"format must be one of {', '.join(FILE_TAGS)}")
    return tag
