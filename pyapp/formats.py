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
    wgsl_f16: str | None = None   # the same loaders reading f16 as f16 (storage kind "f16": needs
    #                           the adapter's `shader-f16`); None: the u32 loaders serve there too

    def loader(self, storage: str = "u32") -> str | None:
        """The loader base name for storage kind `storage` ("u32": f16 values unpacked from u32
        words, runs everywhere; "f16": typed f16 loads), falling back to "u32"."""
        return self.wgsl_f16 if storage == "f16" and self.wgsl_f16 else self.wgsl

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


def _decode_q5_0(rows):
    # block: f16 d, u32 qh (the 5th bits, little-endian), 16 bytes of nibbles; value j < 16 is the
    # low nibble of byte j with bit j of qh, value 16 + j the high nibble with bit 16 + j;
    # x = d * (q - 16)
    import numpy as np
    b = _blocks(rows, 22)
    d = _f16(b, 0)
    qh = np.ascontiguousarray(b[..., 2:6]).view("<u4")                       # [R, nb, 1]
    hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # [R, nb, 32]
    qs = b[..., 6:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1) | hi
    return (d * (q.astype(np.float32) - 16.0)).reshape(rows.shape[0], -1)


def _k_scale_min(sc12):
    """Q4_K's 12 bytes of 6-bit (scale, min) pairs for its 8 sub-blocks -> two uint8 [..., 8]."""
    import numpy as np
    a, m, hi = sc12[..., 0:4], sc12[..., 4:8], sc12[..., 8:12]
    scale = np.concatenate([a & 63, (hi & 0x0F) | ((a >> 6) << 4)], axis=-1)
    mins = np.concatenate([m & 63, (hi >> 4) | ((m >> 6) << 4)], axis=-1)
    return scale, mins


def _decode_q4_k(rows):
    # super-block of 256: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales/mins, 128 bytes of
    # nibbles; sub-blocks 2c and 2c+1 are the low and high nibbles of bytes 32c..32c+31;
    # x = (d * scale) * q - dmin * min
    import numpy as np
    b = _blocks(rows, 144)
    d, dmin = _f16(b, 0), _f16(b, 2)
    scale, mins = _k_scale_min(b[..., 4:16])
    qs = b[..., 16:].reshape(*b.shape[:2], 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-2).reshape(*b.shape[:2], 8, 32)
    x = (d * scale.astype(np.float32))[..., None] * q.astype(np.float32) \
        - (dmin * mins.astype(np.float32))[..., None]
    return x.reshape(rows.shape[0], -1)


def _decode_q6_k(rows):
    # super-block of 256: 128 bytes ql (low 4 bits), 64 bytes qh (2 high bits), 16 int8 scales (one
    # per 16 values), f16 d.  Two halves of 128: in half n, value 32k + l (k = 0..3, l = 0..31) takes
    # its low bits from ql[64n + l + 32 (k & 1)] (low nibble for k < 2, high for k >= 2) and its
    # high bits from bits 2k..2k+1 of qh[32n + l];  x = (d * scale) * (q - 32)
    import numpy as np
    b = _blocks(rows, 210)
    R, nb = b.shape[:2]
    ql = b[..., :128].reshape(R, nb, 2, 1, 2, 32)                             # [.., n, 1, k&1, l]
    lo = np.concatenate([ql & 0x0F, ql >> 4], axis=3).reshape(R, nb, 2, 4, 32)
    qh = b[..., 128:192].reshape(R, nb, 2, 1, 32)
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(4, 1)) & 3         # [.., n, k, l]
    q = (lo | (hi << 4)).astype(np.float32) - 32.0
    scales = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    ds = (_f16(b, 208) * scales).reshape(R, nb, 16, 1)
    return (ds * q.reshape(R, nb, 16, 16)).reshape(R, -1)


# f16-storage loaders (`wgsl_f16`, kernels/formats/<fmt>.h*.wgsl) exist where a block is a WGSL
# struct as stored: 4-byte-aligned blocks (Q4_1: 20 bytes, Q4_K: 144) hold their f16 scales in
# typed fields beside u32 words of quants.  Q8_0 (34), Q5_0 (22) and Q6_K (210) blocks start on
# 2-byte boundaries: their quant bytes would have to be read through f16 values, whose NaN bit
# patterns a GPU need not preserve, so they keep the u32 loaders under either storage kind.
FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("f32", 1, 4, "F32", 0, wgsl="f32"),
    WeightFormat("f16", 1, 2, "F16", 1, wgsl="f16", wgsl_f16="f16.h"),
    WeightFormat("q4_0", 32, 18, "U8", 2, _decode_q4_0),
    WeightFormat("q4_1", 32, 20, "U8", 3, _decode_q4_1, wgsl="q4_1", wgsl_f16="q4_1.h"),
    WeightFormat("q5_0", 32, 22, "U8", 6, _decode_q5_0, wgsl="q5_0"),
    WeightFormat("q8_0", 32, 34, "U8", 8, _decode_q8_0, wgsl="q8_0"),
    WeightFormat("q4_k", 256, 144, "U8", 12, _decode_q4_k, wgsl="q4_k", wgsl_f16="q4_k.h"),
    WeightFormat("q6_k", 256, 210, "U8", 14, _decode_q6_k, wgsl="q6_k"),
)}

# GGUF tensor type names (gguf.GGMLQuantizationType.name) -> format name
GGML_NAMES = {f.name.upper(): f.name for f in FORMATS.values()}

# formats a whole model's weights are kept in (a weight file per tag); "f32" always exists
# (a K-quant GGUF keeps its mix of block types in one file named after its file type: q4_k_m)
FILE_TAGS = ("f32", "f16", "q4_1", "q8_0", "q4_k_m")
# the weight files both backends run (numpy decodes at load, WGSL loaders in kernels/formats/),
# so the server offers them in manifests
SERVED_TAGS = ("f32", "f16", "q4_1", "q8_0", "q4_k_m")


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
