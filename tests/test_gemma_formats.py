"""The K-quant / Q5_0 decodes of pyapp.formats against the `gguf` package's own `dequantize`.

Blocks are random bytes (every bit pattern is a valid block once its f16 scales are finite), at
the shapes Gemma 3 270M stores them in and at odd shapes; bit-exact equality (tolerance 0).
"""
from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest

from pyapp import formats

# format -> (ggml type, byte offsets of its f16 scale fields inside a block)
F16_FIELDS = {"q5_0": [0], "q4_k": [0, 2], "q6_k": [208], "q8_0": [0], "q4_1": [0, 2], "q4_0": [0]}

# (rows, cols): Gemma 3 270M's real shapes (Q5_0: q/k/gate/up with 640-wide rows; Q4_K / Q6_K:
# attn_output [640, 1024], ffn_down [640, 2048]), then odd ones (one block, one row, prime rows)
SHAPES = {
    "q5_0": [(1024, 640), (256, 640), (2048, 640), (1, 32), (7, 96), (3, 4000)],
    "q4_k": [(640, 1024), (640, 2048), (1, 256), (5, 768), (13, 2304)],
    "q6_k": [(640, 2048), (640, 1024), (1, 256), (9, 512), (11, 2816)],
}


def random_blocks(fmt: formats.WeightFormat, rows: int, cols: int, seed: int) -> np.ndarray:
    """uint8 [rows, row_bytes] of random blocks whose f16 scales are finite (|s| < 2)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, fmt.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(rows, -1, fmt.block_bytes)
    for off in F16_FIELDS[fmt.name]:
        scale = rng.uniform(-2, 2, size=blocks.shape[:2]).astype(np.float16)
        blocks[..., off:off + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


@pytest.mark.parametrize("name,shape", [(n, s) for n, ss in SHAPES.items() for s in ss])
def test_decode_matches_gguf(name, shape):
    fmt = formats.get(name)
    raw = random_blocks(fmt, *shape, seed=zlib.crc32(f"{name}{shape}".encode()))
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name.upper()])
    got = fmt.decode(raw, shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["q5_0", "q4_k", "q6_k"])
def test_sizes_match_gguf(name):
    fmt = formats.get(name)
    qt = gguf.GGMLQuantizationType[name.upper()]
    assert (fmt.block, fmt.block_bytes) == gguf.GGML_QUANT_SIZES[qt]
    assert fmt.ggml_type == int(qt)
    assert formats.GGML_NAMES[name.upper()] == name


def test_partial_block_row_is_refused():
    with pytest.raises(formats.UnsupportedFormat, match="whole blocks of 256"):
        formats.get("q4_k").row_bytes(640)
