"""Ops -> dispatches: one lowering function per op kind (`LOWER`), and the fusions as
rewrite rules over the op list (`RULES`), tried in order before the table.

A lowering function gets the backend (buffers, tensors, variants, `b.dispatch`), the op
and the `Step` being planned, and returns its dispatches [(pipeline, group, gx, gy, gz)].
Adding an op kind: a function here, its kernel in `pyapp/kernels/`, one `LOWER` entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import kernels
from . import wgsl
from .device import GpuError


def ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Step:
    T: int                 # tokens in the step
    cache: object          # GpuKVCache or None
    head: bool = False     # head ops of a decoder (params at PARAMS_HEAD: one row)
    last_row: bool = False  # this op reads only the step's last row (the head's first op)
    segs: int = 0          # encoders: sequences packed in the step (0: one, no segment table)

    @property
    def rows(self) -> int:
        return 1 if self.head else self.T


# ----------------------------------------------------------------------------- op kinds

def seg_decl(b, s: Step) -> str:
    """The segment table of a packed encoder step (binding 5, ``b.seg_buf``: per row its
    segment's first and end row, then per segment the same), or a stand-in when unpacked."""
    if not s.segs:
        return "const SEG: bool = false;\nconst SEGT: u32 = 0u;\nfn seg_at(i: u32) -> u32 { return 0u; }"
    return ("@group(0) @binding(5) var<storage, read> seg: array<u32>;\nconst SEG: bool = true;\n"
            f"const SEGT: u32 = {2 * b.max_tokens}u;\nfn seg_at(i: u32) -> u32 {{ return seg[i]; }}")


def _seg_entry(b, s: Step, ent: dict) -> dict:
    if s.segs:
        ent[5] = b.seg_buf
    return ent


def _embed(b, o, s: Step):
    D, w, out = b.model.hidden, o.weights, []
    tok = b.tensors[w["tokens"]]
    for buf, r0, rows, _b0, _nb in tok.chunks:
        src = kernels.render("embed", WDECL=wgsl.wdecl(1, "w", tok.dtype, 1), D=D, R0=r0, R=rows)
        out.append(b.dispatch(src, {1: buf, 2: b.ids_buf, 3: b.acts["x"]}, ceil(s.T * D, 64)))
    for role, pos in (("positions", "true"), ("token_type", "false")):
        if w.get(role):
            t = b.tensors[w[role]]
            for buf, r0, rows, _b0, _nb in t.chunks:
                src = kernels.render("add_row", WDECL=wgsl.wdecl(1, "w", t.dtype, 1), D=D, POS=pos,
                                     R0=r0, R=rows, SEGDECL=seg_decl(b, s))
                out.append(b.dispatch(src, _seg_entry(b, s, {1: buf, 3: b.acts["x"]}), ceil(s.T * D, 64)))
    return out


def _norm(b, o, s: Step):
    w = o.weights
    wt = b.tensors[w["w"]]
    ent = {1: wt.chunks[0][0], 4: b.act(o.outs[0])}
    bdecl = wgsl.NO_BIAS
    if w.get("b"):
        bt = b.tensors[w["b"]]
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1)
        ent[2] = bt.chunks[0][0]
    inplace = o.ins[0] == o.outs[0]
    if not inplace:
        ent[3] = b.act(o.ins[0])
    src = kernels.render("norm", WDECL=wgsl.wdecl(1, "w", wt.dtype, 1), BDECL=bdecl,
                         XDECL=wgsl.norm_input(inplace), D=b.widths[o.ins[0]],
                         WG=int(b.variants["norm_wg"]), EPS=wgsl.f32lit(o.attrs["eps"]),
                         LAYER="true" if o.kind == "layer_norm" else "false",
                         LASTROW="true" if s.last_row else "false")
    return [b.dispatch(src, ent, 1 if s.last_row else s.rows)]


def _linear(b, o, s: Step):
    w = o.weights
    wt = b.tensors[w["w"]]
    T, TB = s.rows, (1 if s.rows == 1 else 4)
    ent0 = {3: b.act(o.ins[0]), 4: b.act(o.outs[0])}
    bdecl = wgsl.NO_BIAS
    if w.get("b"):
        bt = b.tensors[w["b"]]
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1)
        ent0[2] = bt.chunks[0][0]
    if o.attrs.get("transposed"):
        return _linear_t(b, wt, bdecl, ent0, s)
    NF, K = wt.shape
    vec = 4 if K % 4 == 0 else 1
    # the lm head (vocab x hidden) may have its own measured variant (`linear_head`)
    variant = b.variants.get("linear_head") if o.outs[0] == "logits" else None
    wd = wgsl.gemv_weight(wgsl.wdecl(1, "w", wt.dtype, vec), vec)
    return [gemv(b, wd, bdecl, wgsl.GEMV_STORE, vec, rows, K // vec, NF, r0, s, {**ent0, 1: buf}, variant)
            for buf, r0, rows, _b0, _nb in wt.chunks]


def _linear_t(b, wt, bdecl, ent0, s: Step):
    """Transposed weight [K, N]: one dispatch per chunk of input rows k, each continuing the
    sums the previous chunk stored in y (the same order of additions as one dispatch: the
    result is bit-identical); the bias is added by the last."""
    K, N = wt.shape
    T, TB = s.rows, (1 if s.rows == 1 else 4)
    out = []
    for j, (buf, k0, kn, _b0, _nb) in enumerate(wt.chunks):
        last = j == len(wt.chunks) - 1
        ent = {**ent0, 1: buf}
        if not last:
            ent.pop(2, None)
        src = kernels.render("linear_t", WDECL=wgsl.wdecl(1, "w", wt.dtype, 1),
                             BDECL=bdecl if last else wgsl.NO_BIAS, N=N, K=kn, KA=K, K0=k0, TB=TB,
                             ACC="true" if j else "false")
        out.append(b.dispatch(src, ent, ceil(N, 64), ceil(T, TB), head=s.head))
    return out


def gemv(b, wdecl_, bdecl, ydecl, vec, rows, KV, YS, N0, s: Step, ent, variant=None):
    """One GEMV dispatch of the chosen variant (row / wg / sg / sg4 / sgrR)."""
    T = s.rows
    TB = 1 if T == 1 else 4
    variant = variant or b.variants["linear"]
    if variant.startswith("sg") and "subgroups" not in b.device.features:
        variant = "wg"
    subs = dict(WDECL=wdecl_, BDECL=bdecl, YDECL=ydecl, VT=wgsl.vtype(vec),
                N=rows, KV=KV, YS=YS, N0=N0, TB=TB)
    if variant == "row":
        src, gx = kernels.render("linear_row", **subs), ceil(rows, 64)
    elif variant == "wg":
        src, gx = kernels.render("linear_wg", PART=64 * TB, **subs), rows
    elif variant.startswith("sgr"):
        R = int(variant[3:] or 4)
        src = kernels.render("linear_sgr", ENABLE=b.device.subgroup_enable, R=R, RTB=R * TB, **subs)
        gx = ceil(rows, 4 * R)    # 4 subgroups of R columns per workgroup on 32-wide subgroups
    else:
        src = kernels.render("linear_sg", ENABLE=b.device.subgroup_enable,
                             UNROLL=4 if variant == "sg4" else 2, **subs)
        gx = ceil(rows, 4)        # 4 columns per workgroup on 32-wide subgroups
    return b.dispatch(src, ent, gx, ceil(T, TB), head=s.head)


def _split(b, o, s: Step):
    out, c0, sw = [], 0, b.widths[o.ins[0]]
    for name, n in zip(o.outs, o.attrs["sizes"]):
        src = kernels.render("copy_cols", W=n, SW=sw, C0=c0)
        out.append(b.dispatch(src, {1: b.acts[o.ins[0]], 2: b.acts[name]}, ceil(s.rows * n, 64), head=s.head))
        c0 += n
    return out


def _rope(b, o, s: Step):
    a = o.attrs
    H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
    src = kernels.render("rope", H=H, HKV=Hkv, HD=hd, HALF=hd // 2)
    return [b.dispatch(src, {1: b.rope_buf, 2: b.acts[o.ins[0]], 3: b.acts[o.ins[1]]},
                       ceil(s.T * (H + Hkv) * (hd // 2), 64))]


def _attention(b, o, s: Step):
    a = o.attrs
    H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
    q, kk, vv = (b.acts[n] for n in o.ins)
    out, cap = [], 0
    if a["causal"]:
        i, cache = a["layer"], s.cache
        kc, vc, cap = cache.k[i], cache.v[i], cache.capacity
        src = kernels.render("kv_write", HKV=Hkv, HD=hd, CAP=cap)
        out.append(b.dispatch(src, {1: kk, 2: vv, 3: kc, 4: vc}, ceil(s.T * Hkv * hd, 64)))
        kk, vv = kc, vc
    common = dict(H=H, HKV=Hkv, HD=hd, CAP=cap, SCALE=wgsl.f32lit(a["scale"]),
                  CAUSAL="true" if a["causal"] else "false", SEGDECL=seg_decl(b, s))
    if b.variants.get("attention", "row") == "wg":
        src, gx = kernels.render("attention_wg", **common), s.T * H
    else:
        src, gx = kernels.render("attention", WG=32, **common), ceil(s.T * H, 32)
    out.append(b.dispatch(src, _seg_entry(b, s, {1: q, 2: kk, 3: vv, 4: b.acts[o.outs[0]]}), gx))
    return out


def _elementwise(b, o, s: Step):
    W = b.widths[o.outs[0]]
    decl, body, bound = wgsl.elementwise(o.kind, [n == o.outs[0] for n in o.ins])
    ent = {j + 1: b.act(o.ins[j]) for j in bound}
    ent[3] = b.act(o.outs[0])
    src = kernels.render("add" if o.kind == "add" else "unary", DECL=decl, W=W, BODY=body)
    return [b.dispatch(src, ent, ceil(s.rows * W, 64), head=s.head)]


def _pool(b, o, s: Step, out=None, norm=False):
    src = kernels.render("pool", D=b.widths[o.ins[0]], NORM="true" if norm else "false",
                         SEGDECL=seg_decl(b, s))
    ent = _seg_entry(b, s, {1: b.acts[o.ins[0]], 2: b.acts[out or o.outs[0]]})
    return [b.dispatch(src, ent, max(1, s.segs))]      # one workgroup per sequence


def _fused_only(b, o, s: Step):
    raise GpuError(f"op {o.kind!r} runs only fused with the op before it")


LOWER: dict[str, Callable] = {
    "embed": _embed,
    "rms_norm": _norm,
    "layer_norm": _norm,
    "linear": _linear,
    "split": _split,
    "rope": _rope,
    "attention": _attention,
    "silu_mul": _elementwise,
    "add": _elementwise,
    "gelu": _elementwise,
    "gelu_tanh": _elementwise,
    "mean_pool": _pool,
    "l2_normalize": _fused_only,
}


# ----------------------------------------------------------------------------- rewrite rules
# A rule looks at ops[i:] and returns (ops consumed, dispatches) or None.

def _plain_linear(o) -> bool:
    return o.kind == "linear" and not o.attrs.get("transposed")


def fuse_linears(b, ops, i, s: Step):
    """The run of GEMVs from ops[i] over the same input (q/k/v, gate/up) in one dispatch:
    one chunk each, the same K, at most 8 storage bindings."""
    # fusing costs a branch per weight load: measured slower with `row` on lavapipe
    # (5.4 -> 4.9 tok/s), so by default only the reduction variants fuse
    if not b.variants.get("fuse", b.variants["linear"] != "row") or not _plain_linear(ops[i]):
        return None
    o = ops[i]
    K = b.tensors[o.weights["w"]].shape[1]
    grp = []
    for p in ops[i:]:
        t = b.tensors[p.weights["w"]] if p.kind == "linear" else None
        if (not _plain_linear(p) or p.ins[0] != o.ins[0] or p.outs[0] == o.ins[0]
                or len(t.chunks) != 1 or t.shape[1] != K):
            break
        grp.append(p)
    while grp and 1 + sum(2 if p.weights.get("b") else 1 for p in grp) + len(grp) > 8:
        grp.pop()
    if len(grp) < 2:
        return None
    vec = 4 if K % 4 == 0 else 1
    ent, parts = {3: b.act(o.ins[0])}, []
    for j, p in enumerate(grp):
        wt = b.tensors[p.weights["w"]]
        bt = b.tensors[p.weights["b"]] if p.weights.get("b") else None
        ent[10 + j] = wt.chunks[0][0]
        if bt is not None:
            ent[20 + j] = bt.chunks[0][0]
        ent[30 + j] = b.act(p.outs[0])
        parts.append((wt.shape[0], wt.dtype, bt.dtype if bt is not None else None))
    wd, yd = wgsl.multi_gemv(parts, vec)
    rows = sum(n for n, _f, _bf in parts)
    return len(grp), [gemv(b, wd, "", yd, vec, rows, K // vec, rows, 0, s, ent)]


def fuse_pool_normalize(b, ops, i, s: Step):
    """mean_pool followed by l2_normalize: one kernel."""
    if ops[i].kind != "mean_pool" or i + 1 >= len(ops) or ops[i + 1].kind != "l2_normalize":
        return None
    return 2, _pool(b, ops[i], s, out=ops[i + 1].outs[0], norm=True)


RULES: list[Callable] = [fuse_linears, fuse_pool_normalize]


def lower(b, ops, s: Step, head_first_row: bool = False):
    """Dispatches of `ops`; with `head_first_row`, the first op reads only the last row."""
    out, i = [], 0
    while i < len(ops):
        si = Step(s.T, s.cache, s.head, head_first_row and i == 0, s.segs)
        for rule in RULES:
            r = rule(b, ops, i, si)
            if r is not None:
                i += r[0]
                out += r[1]
                break
        else:
            fn = LOWER.get(ops[i].kind)
            if fn is None:
                raise GpuError(f"op {ops[i].kind!r} has no WebGPU kernel")
            out += fn(b, ops[i], si)
            i += 1
    return out
