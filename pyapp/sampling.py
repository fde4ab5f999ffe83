"""Sampling parameters and the one random stream every backend draws from.

The uniform for step `n` is a pure function of (seed, n), a 32-bit integer hash
that WGSL computes bit-for-bit the same way (kernels/sample.wgsl), so a seeded
run picks the same tokens on numpy and on the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

MASK32 = 0xFFFFFFFF


def hash32(x: int) -> int:
    """lowbias32 (Chris Wellons): a good 32-bit integer mix, cheap in WGSL."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def uniform(seed: int, step: int) -> float:
    """A float in [0, 1) with 24 random bits, exact in f32."""
    h = hash32(((seed & MASK32) * 0x9E3779B9 + step) & MASK32)
    return (h >> 8) / 16777216.0


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0          # 0 = off
    top_p: float = 1.0      # 1.0 = off
    seed: int = 0

    def __post_init__(self):
        if not self.greedy:
            if not self.temperature > 0:
                raise ValueError("temperature must be > 0 (use greedy for argmax)")
            if not 0 < self.top_p <= 1:
                raise ValueError("top_p must be in (0, 1]")
            if self.top_k < 0:
                raise ValueError("top_k must be >= 0")


def sample_numpy(logits, params: SamplingParams, step: int) -> int:
    """Reference sampler: argmax, or temperature -> top-k -> top-p -> inverse CDF.

    Ties are broken towards the lower token id, on every backend.
    """
    import numpy as np

    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if params.greedy:
        return int(np.argmax(logits))
    z = logits / np.float32(params.temperature)
    order = np.argsort(-z, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    zs = z[order]
    p = np.exp(zs - zs[0])
    p /= p.sum()
    if params.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (at least one token)
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        p = p[:keep]
        order = order[:keep]
    c = np.cumsum(p)
    u = uniform(params.seed, step) * c[-1]
    i = int(np.searchsorted(c, u, side="right"))
    return int(order[min(i, len(order) - 1)])
