"""KV hand-over frames: one decoder layer's K and V for positions [p0, p1), as they cross the
session WebSocket when the split moves (docs/server.md, "Moving the split").

A frame is a 32-byte little-endian header, then K, then V, each [n_kv_heads, p1 - p0, head_dim]
row-major in the frame's dtype (f32, or f16 = IEEE half, lossy):

    magic b"PKV1" | u32 layer | u32 p0 | u32 p1 | u32 n_kv_heads | u32 head_dim | u32 dtype (0 f32,
    1 f16) | u32 0

A full-attention layer sends every position (p0 = 0); a sliding-window layer of window W sends
only the W - 1 positions a next query can see (p0 = max(0, p1 - W + 1)): that is all its ring is
guaranteed to hold, and all the receiver needs.

Stdlib only: the edge (Pyodide) parses headers here and hands the payload to the GPU as is.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"PKV1"
HEADER = struct.Struct("<4s7I")
DTYPE_CODES = {"f32": 0, "f16": 1}
ITEM_BYTES = {"f32": 4, "f16": 2}


@dataclass(frozen=True)
class KVHeader:
    layer: int
    p0: int
    p1: int
    n_kv_heads: int
    head_dim: int
    dtype: str = "f32"

    @property
    def positions(self) -> int:
        return self.p1 - self.p0

    @property
    def part_bytes(self) -> int:
        """Bytes of K (or of V) in the frame."""
        return self.n_kv_heads * self.positions * self.head_dim * ITEM_BYTES[self.dtype]

    @property
    def frame_bytes(self) -> int:
        return HEADER.size + 2 * self.part_bytes

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.layer, self.p0, self.p1, self.n_kv_heads, self.head_dim,
                           DTYPE_CODES[self.dtype], 0)


def window_start(length: int, window: int | None) -> int:
    """The first position a layer hands over at `length` tokens (window None: full attention)."""
    return 0 if not window else max(0, length - window + 1)


def ring_runs(p0: int, p1: int, slots: int) -> list:
    """[(slot, offset from p0, count)]: the contiguous slot runs holding positions p0..p1-1 in a
    layer of `slots` slots (position p in slot p mod slots; a ring keeps the newest `slots`)."""
    out = []
    p = max(p0, p1 - slots)
    while p < p1:
        s = p % slots
        n = min(p1 - p, slots - s)
        out.append((s, p - p0, n))
        p += n
    return out


def check_handover(layer: int, p0: int, n: int, length: int, window: int | None) -> None:
    """Raise unless positions [p0, p0 + n) are what layer `layer` of a cache at `length` needs."""
    if p0 + n != length:
        raise ValueError(f"KV of layer {layer} covers positions [{p0}, {p0 + n}); the cache is at "
                         f"{length}")
    if p0 > window_start(length, window):
        raise ValueError(f"KV of layer {layer} starts at position {p0}; it needs every position "
                         f"from {window_start(length, window)}")


def check_floors(n: int, floors: dict, windows: dict) -> None:
    """Raise unless a rewind to `n` finds the keys its next query sees in layers whose ring was
    filled by a hand-over (their positions below `floors[layer]` were never there)."""
    for i, floor in floors.items():
        if n and window_start(n, windows[i]) < floor:
            raise ValueError(f"layer {i} holds positions from {floor} only (handed over); "
                             "rewind to 0 instead")


def read_header(buf, offset: int = 0) -> KVHeader:
    """The header at `offset` of a bytes-like (a frame, or several back to back)."""
    mv = memoryview(buf).cast("B")[offset:]
    if len(mv) < HEADER.size or bytes(mv[:4]) != MAGIC:
        raise ValueError("not a KV frame: it must start with the 32-byte PKV1 header")
    _m, layer, p0, p1, hkv, hd, code, _r = HEADER.unpack(bytes(mv[:HEADER.size]))
    dtype = {v: k for k, v in DTYPE_CODES.items()}.get(code)
    if dtype is None:
        raise ValueError(f"KV frame dtype code {code} is not 0 (f32) or 1 (f16)")
    if p1 < p0:
        raise ValueError(f"KV frame positions [{p0}, {p1}) are reversed")
    return KVHeader(layer, p0, p1, hkv, hd, dtype)


def parse_header(frame) -> KVHeader:
    """The header of one whole frame; ValueError (one sentence) if the frame is cut or padded."""
    h = read_header(frame)
    n = memoryview(frame).nbytes
    if n != h.frame_bytes:
        raise ValueError(f"KV frame of layer {h.layer} is {n} bytes; its header says {h.frame_bytes}")
    return h


def f16_to_f32(raw) -> bytes:
    """IEEE half -> f32 little-endian bytes (stdlib; the numpy side uses astype)."""
    n = memoryview(raw).nbytes // 2
    return struct.pack(f"<{n}f", *struct.unpack(f"<{n}e", raw))


def f32_to_f16(raw) -> bytes:
    n = memoryview(raw).nbytes // 4
    return struct.pack(f"<{n}e", *struct.unpack(f"<{n}f", raw))
