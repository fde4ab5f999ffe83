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


LANES = 256                          # the GPU sampler's workgroup: lane l owns ids [l*CH, l*CH + CH)
EXP_K = 12102203.0                   # f32(log2(e) * 2^23)
EXP_YMIN = -1056964608.0             # -126 * 2^23: below it exp_q is 0


def _np():
    import numpy as np
    return np


def f32_key(z):
    """f32 -> u32 with integer order == float order (-0.0 ranks just below +0.0)."""
    np = _np()
    b = np.asarray(z, np.float32).view(np.uint32)
    return np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def exp_q(x):
    """exp(x) for f32 x <= 0, as the WGSL sampler computes it bit for bit (`expq`).

    y = x * f32(log2(e) 2^23) (one f32 multiply), Y = trunc(y) -> 2^(Y / 2^23) = 2^n * the product
    of f32(2^(2^-b)) over the set fraction bits b = 1..23, in that order: multiplications only, so
    a fused multiply-add cannot change it.  0 below 2^-126.  Relative error ~1e-6 near 0,
    growing with |x| (the rounding of y): 4e-6 at x = -80.
    """
    np = _np()
    x = np.asarray(x, np.float32)
    y = x * np.float32(EXP_K)
    ok = y >= np.float32(EXP_YMIN)
    Y = np.where(ok, y, np.float32(0)).astype(np.int32)
    n = Y >> 23
    F = (Y & 0x7FFFFF).astype(np.uint32)
    q = np.ones(x.shape, np.float32)
    for b in range(1, 24):
        k = np.float32(2.0 ** (2.0 ** -b))
        q = np.where(F & np.uint32(1 << (23 - b)), q * k, q)
    return np.where(ok, np.ldexp(q, n).astype(np.float32), np.float32(0))


def _lane_sums(e):
    """Per-lane f32 sums in id order: lane l adds e[l*CH : l*CH + CH] sequentially."""
    np = _np()
    V = e.shape[0]
    ch = -(-V // LANES)
    pad = np.zeros(LANES * ch, np.float32)
    pad[:V] = e
    return np.cumsum(pad.reshape(LANES, ch), axis=1, dtype=np.float32)[:, -1].copy()


def _tree(a):
    a = a.copy()
    s = LANES // 2
    while s:
        a[:s] = a[:s] + a[s:2 * s]
        s //= 2
    return a[0]


def _scan(a):
    a = a.copy()
    off = 1
    while off < LANES:
        a[off:] = a[off:] + a[:-off]
        off *= 2
    return a


def sample_numpy(logits, params: SamplingParams, step: int) -> int:
    """Reference sampler (the GPU's `sample.wgsl` computes the same token bit for bit).

    greedy: argmax, ties to the lower id.  Otherwise, all in f32:

    1. z = logits / temperature; tokens rank by (z desc, id asc); ``key(z)`` maps f32 to u32 so that
       integer order is float order.  e_i = exp_q(z_i - zmax) (a deterministic exp, see `exp_q`).
    2. top_k > 0: keep key >= tk, tk the k-th largest key.  Tokens tied with the k-th are all kept
       (so more than k may be kept on exact ties).  top_p < 1: of those, keep key >= tp, tp the
       largest threshold whose kept mass is >= top_p * S (S the mass of the top-k set): the
       smallest descending prefix reaching top_p, never empty.
    3. u = uniform(seed, step); c = the kept mass; walk the kept tokens in TOKEN-ID order and pick
       the first whose cumulative mass is > u * c (else the last kept id).  No sorting is needed,
       and the whole kept set can be drawn from, however large.

    Sums have the GPU's association: 256 lanes, lane l sums its contiguous ids in order; lane sums
    are combined by a tree (masses for tp) or a Hillis-Steele scan (the draw).
    """
    np = _np()
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if params.greedy:
        return int(np.argmax(logits))
    V = logits.shape[0]
    z = logits / np.float32(params.temperature)
    keys = f32_key(z)
    e = exp_q(z - z.max())
    tk = 0
    if 0 < params.top_k < V:
        tk = int(np.partition(keys, V - params.top_k)[V - params.top_k])
    t = tk
    if params.top_p < 1.0:
        def mass(th):
            return _tree(_lane_sums(np.where(keys >= th, e, np.float32(0))))
        target = np.float32(params.top_p) * mass(tk)
        # the largest kept key value whose mass still reaches the target (the GPU bisects all
        # of u32; the predicate only changes at key values)
        cand = np.unique(keys[keys >= tk])          # ascending; mass(cand[0]) = S >= target
        lo, hi = 0, len(cand) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mass(cand[mid]) >= target:
                lo = mid
            else:
                hi = mid - 1
        t = int(cand[lo])
    kept = keys >= t
    ek = np.where(kept, e, np.float32(0))
    incl = _scan(_lane_sums(ek))
    c = incl[-1]
    uc = np.float32(uniform(params.seed, step)) * c
    ids = np.flatnonzero(kept)
    if not uc < c:
        return int(ids[-1])
    lane = int(np.argmax(incl > uc))
    ch = -(-V // LANES)
    cum = incl[lane - 1] if lane else np.float32(0)
    pick = None
    for i in range(lane * ch, min(lane * ch + ch, V)):
        if kept[i]:
            cum = np.float32(cum + ek[i])
            pick = i
            if cum > uc:
                break
    return int(pick)
