"""Ops -> dispatches: one lowering function per op kind (`LOWER`), and the fusions as
rewrite rules over the op list (`RULES`), tried in order before the table.

A lowering function gets the backend (buffers, tensors, variants, `b.dispatch`), the op
and the `Step` being planned, and returns its dispatches [(pipeline, group, gx, gy, gz)].
Adding an op kind: a function here, its kernel in `pyapp/kernels/`, one `LOWER` entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import formats, kernels
from . import wgsl
from .device import PACKED_DOT, GpuError


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
        src = kernels.render("embed", WDECL=wgsl.wdecl(1, "w", tok.dtype, 1, b.storage), D=D, R0=r0, R=rows)
        out.append(b.dispatch(src, {1: buf, 2: b.ids_src, 3: b.acts["x"]}, ceil(s.T * D, 64)))
    for role, pos in (("positions", "true"), ("token_type", "false")):
        if w.get(role):
            t = b.tensors[w[role]]
            for buf, r0, rows, _b0, _nb in t.chunks:
                src = kernels.render("add_row", WDECL=wgsl.wdecl(1, "w", t.dtype, 1, b.storage), D=D, POS=pos,
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
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1, b.storage)
        ent[2] = bt.chunks[0][0]
    inplace = o.ins[0] == o.outs[0]
    if not inplace:
        ent[3] = b.act(o.ins[0])
    src = kernels.render("norm", WDECL=wgsl.norm_weight(wt.dtype, o.attrs.get("offset"), b.storage), BDECL=bdecl,
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
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1, b.storage)
        ent0[2] = bt.chunks[0][0]
    if o.attrs.get("transposed"):
        return _linear_t(b, wt, bdecl, ent0, s)
    NF, K = wt.shape
    # the lm head (vocab x hidden) may have its own measured variant (`linear_head`)
    variant = b.variants.get("linear_head") if o.outs[0] == "logits" else None
    vec = gemv_vec(b, variant, K, [wt.dtype], T)
    blk = wgsl.block_wdecl(1, "w", wt.dtype, b.storage)
    if blk is not None and (variant or b.variants["linear"]) == "row":
        # one column per invocation walking whole blocks: scales decoded once per block
        TB = 1 if T == 1 else 4
        out = []
        for buf, r0, rows, _b0, _nb in wt.chunks:
            src = kernels.render("linear_row_blk", WDECL=blk, BDECL=bdecl, YDECL=wgsl.GEMV_STORE, N=rows,
                                 KV=K // 4, NB=K // formats.get(wt.dtype).block, YS=NF, N0=r0, TB=TB)
            out.append(b.dispatch(src, {**ent0, 1: buf}, ceil(rows, 64), ceil(T, TB), head=s.head))
        return out
    wd = wgsl.gemv_weight(wgsl.wdecl(1, "w", wt.dtype, vec, b.storage), vec)
    return [gemv(b, wd, bdecl, wgsl.GEMV_STORE, vec, rows, K // wgsl.vwidth(vec), NF, r0, s, {**ent0, 1: buf}, variant)
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
        src = kernels.render("linear_t", WDECL=wgsl.wdecl(1, "w", wt.dtype, 1, b.storage),
                             BDECL=bdecl if last else wgsl.NO_BIAS, N=N, K=kn, KA=K, K0=k0, TB=TB,
                             ACC="true" if j else "false")
        out.append(b.dispatch(src, ent, ceil(N, 64), ceil(T, TB), head=s.head))
    return out


MAX_GROUPS = 65535           # workgroups per dispatch dimension (WebGPU's default limit)


def gemv_variant(b, variant=None) -> str:
    """The GEMV variant that will run: without `subgroups`, `sgwR` runs as `wgwR` (the same
    kernel summing in workgroup memory) and the other `sg*` as `wg` (a plan tuned on an adapter
    with subgroups, e.g. the server's or another binding's, still runs here); without the
    packed int8 dot product, `sgqR[uU]` and `sgqwR[uU]` run as `sgbR[uU]`."""
    variant = variant or b.variants["linear"]
    if variant.startswith("sg") and "subgroups" not in b.device.features:
        return "w" + variant[1:] if variant.startswith("sgw") else "wg"
    if variant.startswith("sgq") and PACKED_DOT not in b.device.features:
        return "sgb" + _variant_suffix(variant)
    return variant


def sgqw_runs(b, variant, K: int, T: int, fmts) -> bool:
    """The wide int8-input GEMV (`sgqwR[uU]`, runs of four blocks as 5 vec4) serves this GEMV:
    one token, rows of whole runs (K % 128 == 0: 16-byte aligned rows; every chunk starts its
    own buffer, backend._alloc), the input row in workgroup memory, formats with the loader
    (Q4_1). Else `gemv` runs it as `sgqR[uU]` (and that as `sgbR[uU]` where sgq cannot run)."""
    return (gemv_variant(b, variant).startswith("sgqw") and T == 1 and K % 128 == 0
            and sgq_fits(b, K // 4) and all(wgsl.has_w(f) for f in fmts))


def gemv_vec(b, variant, K: int, fmts, T: int = 1):
    """How a GEMV over weights of formats `fmts` (T tokens) reads them: "w" (runs of four
    blocks, the `sgqw` variants where `sgqw_runs`), "q" (block words, the `sgb` / `sgq`
    variants, where every format has block-word loaders: Q4_1), 8 (units of 8 values, the `sgw`
    variant over f32 / f16), else 4 (vec4) or 1."""
    v = gemv_variant(b, variant)
    if sgqw_runs(b, variant, K, T, fmts):
        return "w"
    if v.startswith(("sgb", "sgq")) and all(wgsl.has_q(f) for f in fmts):
        return "q"
    if v.startswith(("sgw", "wgw")) and K % 8 == 0 and all(wgsl.has_v8(f) for f in fmts):
        return 8
    return 4 if K % 4 == 0 else 1


def sgq_row_bytes(K: int) -> int:
    """Workgroup memory of linear_sgq's input row of K values: K bytes of int8 + 8 per block of
    32 + 128 for the norm's partial sums, 1.25 K + 128 bytes."""
    return K + 8 * (K // 32) + 128


def sgq_fits(b, KV: int) -> bool:
    """linear_sgq's input row (KV vec4) fits workgroup memory: K <= 12,992 under WebGPU's
    default 16,384 (Llama 7B's widest input, 11,008, takes 13,888)."""
    return sgq_row_bytes(4 * KV) <= b.device.limits.get("max_workgroup_storage", 16384)


def gemv(b, wdecl_, bdecl, ydecl, vec, rows, KV, YS, N0, s: Step, ent, variant=None,
         adecl=None, pairdecl=None):
    """One GEMV dispatch of the chosen variant (row / wg / sg / sg4 / sgrR / sgbR / sgqR / sgqwR /
    sgwR). `adecl`: the input with an RMSNorm folded in (wg / sg / sg4 / sgb* / sgq* / sgw*);
    `pairdecl`: two weights per column; vec "q": block-word loaders (sgbR / sgqR, Q4_1), "w":
    runs of four blocks (sgqwR), 8: 8-value loaders (sgwR; `gemv_vec`)."""
    T = s.rows
    TB = 1 if T == 1 else 4
    variant = gemv_variant(b, variant)
    if variant.startswith("sgqw") and vec != "w":
        variant = "sgq" + _variant_suffix(variant)   # K % 128 != 0 (or T > 1, ...: `sgqw_runs`): the word form
    if ((variant.startswith(("sgb", "sgq")) and vec != "q" and not variant.startswith("sgqw"))
            or (variant.startswith("sgw") and vec != 8)):
        variant = "sg4"           # weights without the variant's loaders (gemv_vec): the vec4 kernel
    if variant.startswith("sgq") and (T > 1 or not sgq_fits(b, KV)):
        variant = "sgb" + _variant_suffix(variant)   # prefill rows, or a row too wide for workgroup memory
    if variant.startswith("wgw") and vec != 8:
        variant = "wg"
    subs = dict(WDECL=wdecl_, BDECL=bdecl, YDECL=ydecl, VT=wgsl.vtype(vec),
                ADECL=adecl or wgsl.gemv_input(vec), PAIRDECL=pairdecl or wgsl.no_pair(vec),
                N=rows, KV=KV, YS=YS, N0=N0, TB=TB)
    if variant.startswith("sgq"):
        R, U = variant_shape(variant)
        code = wgsl.sgqw_code(R, U) if vec == "w" else wgsl.sgq_code(R, U)
        src = kernels.render("linear_sgq", ENABLE=b.device.subgroup_enable, R=R, U=U, NB=KV // 8, **code, **subs)
        gx = ceil(rows, 4 * R)    # 4 subgroups of R columns per workgroup on 32-wide subgroups
        # fewer workgroups than that: each quantizes the input once for several column rounds
        gx = min(gx, int(b.variants.get("sgq_groups") or gx))
    elif variant.startswith("sgb"):
        R, U = variant_shape(variant)
        src = kernels.render("linear_sgb", ENABLE=b.device.subgroup_enable, R=R, U=U, NB=KV // 8,
                             **wgsl.sgb_code(R, U, TB), **subs)
        gx = ceil(rows, 4 * R)    # 4 subgroups of R columns per workgroup on 32-wide subgroups
    elif variant.startswith(("sgw", "wgw")):
        R, U = variant_shape(variant)
        sub = variant.startswith("s")             # wgw: groups of 32 lanes reduce in workgroup memory
        src = kernels.render("linear_sgw", ENABLE=b.device.subgroup_enable if sub else "", R=R, U=U,
                             **wgsl.sgw_code(R, U, TB, sub), **subs)
        gx = ceil(rows, 4 * R)
    elif variant == "row":
        src, gx = kernels.render("linear_row", **subs), ceil(rows, 64)
    elif variant == "wg":
        src, gx = kernels.render("linear_wg", PART=64 * TB, **subs), min(rows, MAX_GROUPS)
    elif variant.startswith("sgr"):
        R = int(variant[3:] or 4)
        src = kernels.render("linear_sgr", ENABLE=b.device.subgroup_enable, R=R, RTB=R * TB, **subs)
        gx = ceil(rows, 4 * R)    # 4 subgroups of R columns per workgroup on 32-wide subgroups
    else:
        src = kernels.render("linear_sg", ENABLE=b.device.subgroup_enable,
                             UNROLL=4 if variant == "sg4" else 2, **subs)
        gx = ceil(rows, 4)        # 4 columns per workgroup on 32-wide subgroups
    return b.dispatch(src, ent, gx, ceil(T, TB), head=s.head)


def _variant_suffix(variant: str) -> str:
    """The `R[uU]` of `sgbR[uU]` / `sgqR[uU]` / `sgqwR[uU]` / `sgwR[uU]` / `wgwR[uU]`."""
    return variant[4 if variant.startswith("sgqw") else 3:]


def variant_shape(variant: str) -> tuple[int, int]:
    """(R, U) of a variant with an `R[uU]` suffix: R columns per subgroup, U units per trip."""
    R, _, U = _variant_suffix(variant).partition("u")
    return int(R or 2), int(U or 1)


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
    return [b.dispatch(src, {1: b.rope_bufs[a["theta"]], 2: b.acts[o.ins[0]], 3: b.acts[o.ins[1]]},
                       ceil(s.T * (H + Hkv) * (hd // 2), 64))]


# llvmpipe (lavapipe) ends a shader invocation after 65,535 loop iterations in all (its loop
# limiter); the `row` attention runs 2 * HD + 1 of them per key in one invocation
LOOP_BUDGET = 65535


def _row_attention_fits(keys: int, hd: int) -> bool:
    """One invocation per (row, head) stays inside LOOP_BUDGET for `keys` keys (else `wg`)."""
    return keys * (2 * hd + 1) + 2 * hd < LOOP_BUDGET


def _attention_keys(hd: int) -> str:
    """attention_wg's key loader `kdot(o)`: q (qs, workgroup memory) . the key row at o; vec4
    loads when a row is whole vec4s."""
    if hd % 4 == 0:
        return ("@group(0) @binding(2) var<storage, read> kk: array<vec4f>;\n"
                "fn kdot(o: u32) -> f32 {\n  let b = o / 4u;\n  var s = 0.0;\n"
                "  for (var i = 0u; i < HD4; i++) { s += dot(qs[i], kk[b + i]); }\n  return s;\n}")
    return ("@group(0) @binding(2) var<storage, read> kk: array<f32>;\n"
            "fn kdot(o: u32) -> f32 {\n  var s = 0.0;\n"
            "  for (var d = 0u; d < HD; d++) { s += qs[d / 4u][d % 4u] * kk[o + d]; }\n  return s;\n}")


def _attention(b, o, s: Step):
    a = o.attrs
    H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
    q, kk, vv = (b.acts[n] for n in o.ins)
    out, cap = [], 0
    if a["causal"]:
        i, cache = a["layer"], s.cache
        kc, vc, cap = cache.k[i], cache.v[i], cache.slots[i]   # slots: a ring on window layers
        src = kernels.render("kv_write", HKV=Hkv, HD=hd, CAP=cap)
        out.append(b.dispatch(src, {1: kk, 2: vv, 3: kc, 4: vc}, ceil(s.T * Hkv * hd, 64)))
        kk, vv = kc, vc
    common = dict(H=H, HKV=Hkv, HD=hd, CAP=cap, SCALE=wgsl.f32lit(a["scale"]),
                  CAUSAL="true" if a["causal"] else "false", WIN=a.get("window") or 0,
                  SEGDECL=seg_decl(b, s))
    if b.variants.get("attention", "row") == "wg" or not _row_attention_fits(cap or b.max_tokens, hd):
        src, gx = kernels.render("attention_wg", KDECL=_attention_keys(hd), **common), s.T * H
    else:
        src, gx = kernels.render("attention", WG=32, **common), ceil(s.T * H, 32)
    out.append(b.dispatch(src, _seg_entry(b, s, {1: q, 2: kk, 3: vv, 4: b.acts[o.outs[0]]}), gx))
    return out


def _elementwise(b, o, s: Step, prelude: str = ""):
    W = b.widths[o.outs[0]]
    decl, body, bound = wgsl.elementwise(o.kind, [n == o.outs[0] for n in o.ins])
    ent = {j + 1: b.act(o.ins[j]) for j in bound}
    ent[3] = b.act(o.outs[0])
    if o.kind == "add":
        src = kernels.render("add", prelude, DECL=decl, W=W, BODY=body)
    else:
        src = kernels.render("unary", prelude, DECL=decl, W=W, BODY=body, ACT=kernels.snippet("activations"))
    return [b.dispatch(src, ent, ceil(s.rows * W, 64), head=s.head)]


def _scale(b, o, s: Step):
    """y = a * float32(value) (Gemma's sqrt(hidden) on the embedding)."""
    return _elementwise(b, o, s, f"const VALUE: f32 = {wgsl.f32lit(o.attrs['value'])};\n")


def _groups(b, o) -> int:
    W, G = b.widths[o.ins[0]], o.attrs["group"]
    if W % G:
        raise GpuError(f"rms_norm group {G} does not divide the width {W} of {o.ins[0]!r}")
    return W // G


def _norm_group(b, o, s: Step, o2=None):
    """RMSNorm over each run of `group` columns (per-head q/k norms), offset included; `o2`: a
    second such norm (in place, the same group / eps / offset) in the same dispatch."""
    wt, G, NG = b.tensors[o.weights["w"]], o.attrs["group"], _groups(b, o)
    inplace = o.ins[0] == o.outs[0]
    ent = {1: wt.chunks[0][0], 4: b.act(o.outs[0])}
    if not inplace:
        ent[3] = b.act(o.ins[0])
    offset = o.attrs.get("offset")
    pair, NG2 = ("const NG2: u32 = 0u;\nfn ldx2(i: u32) -> f32 { return 0.0; }\n"
                 "fn ldw2(i: u32) -> f32 { return 0.0; }\nfn sty2(i: u32, v: f32) {}"), 0
    if o2 is not None:
        w2, NG2 = b.tensors[o2.weights["w"]], _groups(b, o2)
        pair = (f"const NG2: u32 = {NG2}u;\n" + wgsl.act_out(5, "y2")
                + "\nfn ldx2(i: u32) -> f32 { return y2[i]; }\nfn sty2(i: u32, v: f32) { y2[i] = v; }\n"
                + wgsl.norm_weight(w2.dtype, offset, b.storage, 2, "w2"))
        ent.update({2: w2.chunks[0][0], 5: b.act(o2.outs[0])})
    src = kernels.render("norm_group", WDECL=wgsl.norm_weight(wt.dtype, offset, b.storage),
                         XDECL=wgsl.norm_input(inplace), PAIRDECL=pair, G=G, NG=NG, EPS=wgsl.f32lit(o.attrs["eps"]),
                         WG=int(b.variants["norm_wg"]))
    # a workgroup per (row, group); y = 1 the second norm's
    return [b.dispatch(src, ent, s.rows * max(NG, NG2), 2 if o2 is not None else 1, head=s.head)]


def _rms_norm(b, o, s: Step):
    return (_norm_group if o.attrs.get("group") else _norm)(b, o, s)


def _pool(b, o, s: Step, out=None, norm=False):
    src = kernels.render("pool", D=b.widths[o.ins[0]], NORM="true" if norm else "false",
                         SEGDECL=seg_decl(b, s))
    ent = _seg_entry(b, s, {1: b.acts[o.ins[0]], 2: b.acts[out or o.outs[0]]})
    return [b.dispatch(src, ent, max(1, s.segs))]      # one workgroup per sequence


def _fused_only(b, o, s: Step):
    raise GpuError(f"op {o.kind!r} runs only fused with the op before it")


LOWER: dict[str, Callable] = {
    "embed": _embed,
    "rms_norm": _rms_norm,
    "layer_norm": _norm,
    "linear": _linear,
    "split": _split,
    "rope": _rope,
    "attention": _attention,
    "silu_mul": _elementwise,
    "add": _elementwise,
    "gelu": _elementwise,
    "gelu_tanh": _elementwise,
    "gelu_tanh_mul": _elementwise,
    "scale": _scale,
    "mean_pool": _pool,
    "l2_normalize": _fused_only,
}


# ----------------------------------------------------------------------------- rewrite rules
# A rule looks at ops[i:] and returns (ops consumed, dispatches) or None.

def _plain_linear(o) -> bool:
    return o.kind == "linear" and not o.attrs.get("transposed")


def _fusing(b) -> bool:
    # fusing costs a branch per weight load: measured slower with `row` on lavapipe
    # (5.4 -> 4.9 tok/s), so by default only the reduction variants fuse
    return bool(b.variants.get("fuse", b.variants["linear"] != "row"))


def _dead_after(ops, j, name) -> bool:
    """Nothing from ops[j] on reads activation `name` before writing it."""
    for p in ops[j:]:
        if name in p.ins:
            return False
        if name in p.outs:
            return True
    return True


def _plain_rms_norm(o, offset: bool = False) -> bool:
    """An RMSNorm the fused kernels implement: no bias, no per-head groups; a (1 + w) offset
    only where the kernel takes one (`offset`: the GEMV fold, add_norm, norm_add)."""
    return (o.kind == "rms_norm" and not o.weights.get("b") and (offset or not o.attrs.get("offset"))
            and not o.attrs.get("group"))


def _norm_foldable(b, o, offset: bool = False) -> bool:
    return _plain_rms_norm(o, offset) and o.ins[0] != o.outs[0] and b.variants.get("fold", True)


def fuse_gemv(b, ops, i, s: Step):
    """GEMVs over one input in one dispatch, with what can ride along:
    * an RMSNorm before them folded into their input (`rms_norm(x) -> h`, h read by them alone;
      Gemma's (1 + w) too: its input / pre-FFN norms then cost no dispatch of their own);
    * the run of GEMVs over the same input (q/k/v, gate/up): one chunk each, the same K,
      at most 8 storage bindings;
    * gate/up followed by silu_mul / gelu_tanh_mul: one weight pair per column, act(g)*u in
      the store (no g / u round trip, no elementwise dispatch);
    * one GEMV followed by the residual add (`x += y`): the add in the store.
    Only the reduction variants (`_reduction_variant`) take the norm, the pair and the add."""
    if not _fusing(b):
        return None
    j, norm = i, None
    if _norm_foldable(b, ops[i], offset=True) and i + 1 < len(ops) and _plain_linear(ops[i + 1]) \
            and ops[i + 1].ins[0] == ops[i].outs[0] and not (s.head and s.T > 1):
        norm, j = ops[i], i + 1
    if not _plain_linear(ops[j]):
        return None
    o = ops[j]
    head = o.outs[0] == "logits"
    variant = gemv_variant(b, b.variants.get("linear_head") if head else None)
    rich = _reduction_variant(variant) and b.variants.get("fold", True)
    K = b.tensors[o.weights["w"]].shape[1]
    grp = []
    for p in ops[j:]:
        t = b.tensors[p.weights["w"]] if p.kind == "linear" else None
        if (not _plain_linear(p) or p.ins[0] != o.ins[0] or p.outs[0] == o.ins[0]
                or len(t.chunks) != 1 or t.shape[1] != K):
            break
        grp.append(p)
    extra = 1 if norm else 0
    while grp and 1 + extra + sum(2 if p.weights.get("b") else 1 for p in grp) + len(grp) > 8:
        grp.pop()
    after = j + len(grp)
    if norm is not None and not (rich and grp and _dead_after(ops, after, norm.outs[0])):
        return None                 # the norm stays a dispatch; its GEMVs fuse on the next try
    vec = gemv_vec(b, variant, K, [b.tensors[p.weights["w"]].dtype for p in grp], s.rows)
    adecl = None
    ent = {3: b.act(o.ins[0])}
    if norm is not None:
        nt = b.tensors[norm.weights["w"]]
        adecl = wgsl.gemv_input(vec, (nt.dtype, norm.attrs["eps"], K, norm.attrs.get("offset") or 0), b.storage)
        ent = {3: b.act(norm.ins[0]), 5: nt.chunks[0][0]}
    nxt = ops[after] if after < len(ops) else None
    # gate/up + act(g)*u (SiLU: llama; tanh GELU: Gemma): one weight pair per column
    if (rich and len(grp) == 2 and nxt is not None and nxt.kind in wgsl.PAIR_ACT
            and nxt.ins == (grp[0].outs[0], grp[1].outs[0]) and nxt.outs[0] not in nxt.ins
            and not any(p.weights.get("b") for p in grp)
            and all(_dead_after(ops, after + 1, p.outs[0]) for p in grp)):
        wg_, wu = (b.tensors[p.weights["w"]] for p in grp)
        if wg_.shape == wu.shape:
            rows = wg_.shape[0]
            wd, yd, pd = wgsl.act_pair(wgsl.PAIR_ACT[nxt.kind], wg_.dtype, wu.dtype, rows, vec, b.storage)
            ent.update({10: wg_.chunks[0][0], 11: wu.chunks[0][0], 30: b.act(nxt.outs[0])})
            return after + 1 - i, [gemv(b, wd, "", yd, vec, rows, K // wgsl.vwidth(vec), rows, 0, s, ent, variant,
                                        adecl, pd)]
    if len(grp) >= 2:
        parts = []
        for jj, p in enumerate(grp):
            wt = b.tensors[p.weights["w"]]
            bt = b.tensors[p.weights["b"]] if p.weights.get("b") else None
            ent[10 + jj] = wt.chunks[0][0]
            if bt is not None:
                ent[20 + jj] = bt.chunks[0][0]
            ent[30 + jj] = b.act(p.outs[0])
            parts.append((wt.shape[0], wt.dtype, bt.dtype if bt is not None else None))
        wd, yd = wgsl.multi_gemv(parts, vec, b.storage)
        rows = sum(n for n, _f, _bf in parts)
        return after - i, [gemv(b, wd, "", yd, vec, rows, K // wgsl.vwidth(vec), rows, 0, s, ent, variant, adecl)]
    # one GEMV: a folded norm and/or the residual add after it
    add = rich and _residual_add(ops, after, o)
    if norm is None and not add:
        return None
    wt = b.tensors[o.weights["w"]]
    bdecl = wgsl.NO_BIAS
    if o.weights.get("b"):
        bt = b.tensors[o.weights["b"]]
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1, b.storage)
        ent[2] = bt.chunks[0][0]
    ent[1] = wt.chunks[0][0]
    ent[4] = b.act(nxt.outs[0] if add else o.outs[0])
    wd = wgsl.gemv_weight(wgsl.wdecl(1, "w", wt.dtype, vec, b.storage), vec)
    yd = wgsl.GEMV_STORE_ADD if add else wgsl.GEMV_STORE
    NF = wt.shape[0]
    return after + (1 if add else 0) - i, [gemv(b, wd, bdecl, yd, vec, NF, K // wgsl.vwidth(vec), NF, 0, s, ent, variant, adecl)]


def _reduction_variant(variant: str) -> bool:
    """GEMV variants whose columns are reductions that take a folded norm, a weight pair and a
    residual add (not `row`, not `sgrR`)."""
    return variant in ("wg", "sg", "sg4") or variant.startswith(("sgb", "sgq", "sgw", "wgw"))


def _residual_add(ops, j, o) -> bool:
    """ops[j] is `x += y` over linear o's output y (read by nothing after): foldable into o's store."""
    nxt = ops[j] if j < len(ops) else None
    return (nxt is not None and nxt.kind == "add" and nxt.ins[1] == o.outs[0]
            and nxt.outs[0] == nxt.ins[0] != o.ins[0] and _dead_after(ops, j + 1, o.outs[0]))


def _add_norm(b, x, r, y, norm, s: Step):
    """add_norm.wgsl: x += r (when r is given), y = rms_norm(x) (256 lanes per row)."""
    wt = b.tensors[norm.weights["w"]]
    ent = {1: wt.chunks[0][0], 3: b.act(x), 4: b.act(y)}
    wdecl = wgsl.norm_weight(wt.dtype, norm.attrs.get("offset"), b.storage)
    rdecl = "fn ldr(i: u32) -> f32 { return 0.0; }"
    if r is not None:
        rdecl = wgsl.act_in(2, "r") + "\nfn ldr(i: u32) -> f32 { return r[i]; }"
        ent[2] = b.act(r)
    src = kernels.render("add_norm", WDECL=wdecl, RDECL=rdecl, D=b.widths[x],
                         EPS=wgsl.f32lit(norm.attrs["eps"]), ADD="true" if r is not None else "false")
    return b.dispatch(src, ent, s.rows, head=s.head)


def fuse_add_norm(b, ops, i, s: Step):
    """Residual add + the RMSNorm after it (or a lone RMSNorm) in one 256-lane pass; a
    post-norm + the residual add after it (Gemma's `o = rms_norm(o); x += o`: norm_add.wgsl);
    on the reduction variants; the head's last-row norm keeps `norm`."""
    if not _fusing(b) or s.last_row:
        return None
    o = ops[i]
    if _plain_rms_norm(o, offset=True) and i + 1 < len(ops) and _post_norm_add(ops, i):
        return 2, [_norm_add(b, ops[i + 1].ins[0], o, s)]
    if _plain_rms_norm(o, offset=True) and o.ins[0] != o.outs[0]:
        return 1, [_add_norm(b, o.ins[0], None, o.outs[0], o, s)]
    if (o.kind == "add" and o.outs[0] == o.ins[0] and o.ins[1] != o.ins[0] and i + 1 < len(ops)
            and _plain_rms_norm(ops[i + 1], offset=True) and ops[i + 1].ins[0] == o.outs[0]
            and ops[i + 1].outs[0] != o.outs[0]):
        return 2, [_add_norm(b, o.outs[0], o.ins[1], ops[i + 1].outs[0], ops[i + 1], s)]
    return None


def _post_norm_add(ops, i) -> bool:
    """ops[i] (an RMSNorm y = rms_norm(r)) then ops[i + 1] `x += y`, y read by nothing after
    (Gemma's post-attention / post-FFN norms, in place on r)."""
    nm, ad = ops[i], ops[i + 1]
    y = nm.outs[0]
    return (ad.kind == "add" and ad.ins[1] == y and ad.outs[0] == ad.ins[0] not in (y, nm.ins[0])
            and _dead_after(ops, i + 2, y))


def _norm_add(b, x, norm, s: Step):
    """norm_add.wgsl: x += rms_norm(r) (r = the norm's input, unchanged), 256 lanes per row."""
    wt = b.tensors[norm.weights["w"]]
    src = kernels.render("norm_add", WDECL=wgsl.norm_weight(wt.dtype, norm.attrs.get("offset"), b.storage),
                         D=b.widths[x], EPS=wgsl.f32lit(norm.attrs["eps"]))
    return b.dispatch(src, {1: wt.chunks[0][0], 2: b.act(norm.ins[0]), 3: b.act(x)}, s.rows, head=s.head)


ATTN_SPLIT = 32              # keys per workgroup of a decode token (H200: 32 beat 64 and 128, docs/performance.md)


def attention_splits(T: int, capacity: int, split: int = ATTN_SPLIT) -> tuple[int, int]:
    """(NS, SL): a decode token's context in splits of ATTN_SPLIT keys; one split for prefill."""
    ns = ceil(capacity, split) if T == 1 else 1
    return (1, capacity) if ns == 1 else (ns, split)


def fuse_rope_attention(b, ops, i, s: Step):
    """rope + causal attention (+ the KV-cache append) -> attention_split (attention_dec for a
    decode token, unless the variants say `attn_dec: false`); a split context's merge folded into
    the o-projection after it, or attention_merge; on the reduction variants."""
    if not _fusing(b) or b.variants.get("attention", "row") == "row" or s.cache is None:
        return None
    r = ops[i]
    if r.kind != "rope" or i + 1 >= len(ops):
        return None
    at = ops[i + 1]
    # sliding-window layers read a ring cache (`attention` with WIN): not this kernel's layout
    if (at.kind != "attention" or not at.attrs["causal"] or at.attrs.get("window")
            or tuple(at.ins[:2]) != tuple(r.outs)
            or tuple(r.ins) != tuple(r.outs) or not all(_dead_after(ops, i + 2, n) for n in r.outs)):
        return None
    a = at.attrs
    H, Hkv, hd, li, cache = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["layer"], s.cache
    ns, sl = attention_splits(s.T, cache.capacity, int(b.variants.get("attn_split", ATTN_SPLIT)))
    y = b.acts[at.outs[0]]
    out = y if ns == 1 else cache.scratch(s.T * H * ns * (hd + 2) * 4)
    common = dict(H=H, HKV=Hkv, HD=hd, HALF=hd // 2, CAP=cache.capacity, SCALE=wgsl.f32lit(a["scale"]), NS=ns)
    # attention_dec: decode only; one split (SL = the capacity) rounded up to a power of two
    dsl = sl if ns > 1 else 1 << (sl - 1).bit_length()
    # H200 run 13a: 21.7 -> 4.3 us a layer at SmolLM2, 53.5 -> 7.6 at Llama 7B (docs/performance.md)
    if s.T == 1 and b.variants.get("attn_dec", True) and wgsl.attn_dec_fits(hd, dsl):
        src = kernels.render("attention_dec", SL=dsl, **common, **wgsl.attn_dec_code(hd, dsl))
    else:
        src = kernels.render("attention_split", SL=sl, DPL=ceil(hd, 64), **common)
    q, k, v = (b.acts[n] for n in at.ins)
    disp = [b.dispatch(src, {1: b.rope_bufs[r.attrs["theta"]], 2: q, 3: k, 4: v, 5: cache.k[li], 6: cache.v[li], 7: out},
                       s.T * H, ns)]
    return _merge_split(b, ops, i + 2, 2, s, at, out, ns, sl, disp)


def _merge_split(b, ops, j, n, s: Step, at, part, ns, sl, disp):
    """After a split attention (its dispatches `disp`; n ops up to ops[j] consumed): nothing when the
    context is one split (normalized in place); else the merge folded into the o-projection
    ops[j] (+ the residual add), or the attention_merge dispatch. (ops consumed, dispatches)."""
    if ns == 1:
        return n, disp
    a = at.attrs
    H, hd = a["n_heads"], a["head_dim"]
    r = _oproj_merged(b, ops, j, s, at.outs[0], part, ns, sl, H, hd)
    if r is not None:
        return n + r[0], disp + r[1]
    src = kernels.render("attention_merge", HD=hd, NS=ns, H=H)
    return n, disp + [b.dispatch(src, {1: part, 2: b.acts[at.outs[0]]}, s.T * H)]


# Widest attention output (heads x head_dim) whose merge the o-projection repeats per
# workgroup. H200, run 11: SmolLM2 (576) 258 -> 274 tok/s with the fold; Llama 7B (4,096)
# 93.5 -> 50.4, every workgroup merging 32 heads in 16 KB of workgroup memory.
FOLD_MERGE_MAX = 1024


def _oproj_merged(b, ops, j, s: Step, name, part, ns, sl, H, hd):
    """ops[j], a linear over the attention output `name` (read by nothing else), as a decode
    GEMV whose input loader merges the split partials `part` in workgroup memory
    (attention_merge_input.wgsl), with a residual add after it in its store; on the
    reduction variants when the merged row fits workgroup memory. (ops consumed, [dispatch]) or None."""
    if (s.T != 1 or j >= len(ops) or "fold_merge" in b.variants.get("off", ())
            or H * hd > b.variants.get("fold_merge_max", FOLD_MERGE_MAX)):
        return None
    o = ops[j]
    variant = gemv_variant(b)
    if (not _plain_linear(o) or o.ins[0] != name
            or not (variant in ("wg", "sg", "sg4") or variant.startswith(("sgw", "wgw", "sgb", "sgq")))
            or not b.variants.get("fold", True) or not _dead_after(ops, j + 1, name)):
        return None
    wt = b.tensors[o.weights["w"]]
    NF, K = wt.shape
    # the merged row + a weight per (head, split) + the GEMV's own workgroup memory (T = 1:
    # linear_wg's 3 x 64 partial sums, linear_sgw's wgw form, linear_sgq's int8 row: 1.25 K + 128 B)
    if variant.startswith("wgw"):
        scratch = wgsl.group_reduce_floats(variant_shape(variant)[0], 1)
    elif variant.startswith("sgq"):
        scratch = sgq_row_bytes(K) // 4
    else:
        scratch = 3 * 64
    if (len(wt.chunks) != 1 or K != H * hd
            or (K + H * ns + scratch) * 4 > b.device.limits.get("max_workgroup_storage", 16384)):
        return None
    add = _residual_add(ops, j + 1, o)
    nxt = ops[j + 1] if add else None
    vec = gemv_vec(b, None, K, [wt.dtype])
    avec = 4 if vec in (8, "q", "w") else vec    # sgw reads its input as vec4 pairs, sgb / sgq as vec4
    ent = {1: wt.chunks[0][0], 3: part, 4: b.act(nxt.outs[0] if add else o.outs[0])}
    bdecl = wgsl.NO_BIAS
    if o.weights.get("b"):
        bt = b.tensors[o.weights["b"]]
        bdecl = wgsl.wdecl(2, "b", bt.dtype, 1)
        ent[2] = bt.chunks[0][0]
    wd = wgsl.gemv_weight(wgsl.wdecl(1, "w", wt.dtype, vec), vec)
    yd = wgsl.GEMV_STORE_ADD if add else wgsl.GEMV_STORE
    adecl = wgsl.merged_attention_input(avec, K // avec, H, hd, ns, sl)
    return 1 + add, [gemv(b, wd, bdecl, yd, vec, NF, K // wgsl.vwidth(vec), NF, 0, s, ent, variant, adecl)]


def fuse_qkv_attention(b, ops, i, s: Step):
    """A decode token's rms_norm -> q/k/v linears -> rope -> causal attention in one dispatch
    (attention_qkv.wgsl: each (head, split) workgroup projects its own q; the split holding
    the new position also its k and v), then the split merge folded into the o-projection:
    a llama layer in 4 dispatches. Reduction variants, T = 1, no biases, no sliding window;
    9 storage bindings. Prefill keeps the other rules.
    By default only on CPU adapters: each head's q/k/v rows then run on heads x splits
    workgroups instead of the whole GPU, which halved decode speed on the H200 (SmolLM2 f16
    228 -> 107 tok/s, Llama 7B f16 91 -> 9; docs/performance.md, run 11); variant
    `qkv_attention` forces it either way."""
    if (not _fusing(b) or b.variants.get("attention", "row") == "row" or s.cache is None or s.T != 1
            or s.head or gemv_variant(b) not in ("wg", "sg", "sg4") or not b.variants.get("fold", True)
            or b.device.limits.get("max_storage_buffers", 8) < 9 or i + 6 > len(ops)
            or not b.variants.get("qkv_attention", b.cpu)):
        return None
    nm, *lin, r, at = ops[i:i + 6]
    if not (_norm_foldable(b, nm) and r.kind == "rope" and at.kind == "attention"):
        return None
    a = at.attrs
    q, k, v = at.ins
    if (not a["causal"] or a.get("window") or tuple(r.ins) != (q, k) or tuple(r.outs) != (q, k)
            or sorted(p.outs[0] for p in lin) != sorted((q, k, v))
            or not all(_plain_linear(p) and p.ins[0] == nm.outs[0] and not p.weights.get("b") for p in lin)
            or not all(_dead_after(ops, i + 6, n) for n in (nm.outs[0], q, k, v))):
        return None
    w = {p.outs[0]: b.tensors[p.weights["w"]] for p in lin}
    H, Hkv, hd, li, cache = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["layer"], s.cache
    D = b.widths[nm.ins[0]]
    if (any(len(t.chunks) != 1 for t in w.values()) or w[q].shape != (H * hd, D)
            or w[k].shape != (Hkv * hd, D) or w[v].shape != (Hkv * hd, D)):
        return None
    ns, sl = attention_splits(1, cache.capacity, int(b.variants.get("attn_split", ATTN_SPLIT)))
    out = b.acts[at.outs[0]] if ns == 1 else cache.scratch(H * ns * (hd + 2) * 4)
    vec = 4 if D % 4 == 0 else 1
    nt = b.tensors[nm.weights["w"]]
    src = kernels.render("attention_qkv", VT=wgsl.vtype(vec), MULV=wgsl.mulv(vec),
                         NWDECL=wgsl.wdecl(3, "nw", nt.dtype, vec), WQDECL=wgsl.wdecl(4, "wq", w[q].dtype, vec),
                         WKDECL=wgsl.wdecl(5, "wk", w[k].dtype, vec), WVDECL=wgsl.wdecl(6, "wv", w[v].dtype, vec),
                         H=H, HKV=Hkv, HD=hd, HALF=hd // 2, CAP=cache.capacity, SCALE=wgsl.f32lit(a["scale"]),
                         NS=ns, SL=sl, DPL=ceil(hd, 64), KV=D // vec, D=D, EPS=wgsl.f32lit(nm.attrs["eps"]),
                         HDKP=hd * 8)
    ent = {1: b.rope_bufs[r.attrs["theta"]], 2: b.act(nm.ins[0]), 3: nt.chunks[0][0], 4: w[q].chunks[0][0],
           5: w[k].chunks[0][0], 6: w[v].chunks[0][0], 7: cache.k[li], 8: cache.v[li], 9: out}
    return _merge_split(b, ops, i + 6, 6, s, at, out, ns, sl, [b.dispatch(src, ent, H, ns)])


def fuse_norm_groups(b, ops, i, s: Step):
    """Two per-head RMSNorms in place on different tensors (Gemma's q_norm, k_norm) with the same
    group, eps and offset: one norm_group dispatch (workgroup row y = 1 the second), on the
    reduction variants."""
    if not _fusing(b) or i + 1 >= len(ops):
        return None
    o, o2 = ops[i], ops[i + 1]
    if not all(p.kind == "rms_norm" and p.attrs.get("group") and not p.weights.get("b")
               and p.ins[0] == p.outs[0] for p in (o, o2)):
        return None
    if o.ins[0] == o2.ins[0] or any(o.attrs.get(k) != o2.attrs.get(k) for k in ("group", "eps", "offset")):
        return None
    return 2, _norm_group(b, o, s, o2)


def fuse_pool_normalize(b, ops, i, s: Step):
    """mean_pool followed by l2_normalize: one kernel."""
    if ops[i].kind != "mean_pool" or i + 1 >= len(ops) or ops[i + 1].kind != "l2_normalize":
        return None
    return 2, _pool(b, ops[i], s, out=ops[i + 1].outs[0], norm=True)


RULES: list[Callable] = [fuse_qkv_attention, fuse_gemv, fuse_rope_attention, fuse_add_norm, fuse_norm_groups,
                         fuse_pool_normalize]


def check_ops(ops) -> None:
    """Refuse, before any buffer exists, an op kind this backend has no kernel for."""
    for o in ops:
        if o.kind not in LOWER:
            raise GpuError(f"op {o.kind!r} has no WebGPU kernel yet (it runs on the numpy backend)")


def lower(b, ops, s: Step, head_first_row: bool = False):
    """Dispatches of `ops`; with `head_first_row`, the first op reads only the last row."""
    out, i = [], 0
    off = b.variants.get("off", ())    # rule names switched off (benchmarks: before / after)
    rules = [r for r in RULES if r.__name__ not in off]
    while i < len(ops):
        si = Step(s.T, s.cache, s.head, head_first_row and i == 0, s.segs)
        for rule in rules:
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
