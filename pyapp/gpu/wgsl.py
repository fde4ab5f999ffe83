"""The WGSL fragments the lowering splices into kernel templates (`${WDECL}`, `${BDECL}`, ...).

Kernels live in `pyapp/kernels/*.wgsl`; a weight's loader comes from its format's entry
(`pyapp.formats`, `kernels/formats/<fmt>[.vec4].wgsl`); this module only glues them.
"""
from __future__ import annotations

from .. import formats, kernels
from .device import GpuError

NO_BIAS = "fn ldb(i: u32) -> f32 { return 0.0; }"


# storage kinds of weight bindings: "u32" (words unpacked in the shader; every adapter) and
# "f16" (typed f16 loads; adapters with `shader-f16`): `formats.WeightFormat.loader`
STORAGE = ("u32", "f16")
_SUFFIX = {1: "", 4: ".vec4", 8: ".v8", "q": ".q", "w": ".w"}


def _loader(fmt: str, storage: str) -> str:
    f = formats.get(fmt)
    name = f.loader(storage)
    if name is None:
        raise GpuError(f"weight format {f.name} has no WebGPU loader")
    return name


def wdecl(binding: int, name: str, fmt: str, vec, storage: str = "u32") -> str:
    """Declaration of weight binding `name` and its loader `ld<name>(i)`: value i (vec 1) or
    values 4i..4i+3 as a vec4f (vec 4), dequantized in registers; vec "q": the block-word
    loaders `dm<name>(b)` / `qs<name>(b, j)` of the `sgb` GEMV; vec "w": `quad<name>(g, i)`,
    vec4 i of the g-th run of four blocks (the `sgqw` GEMV); vec 8: values 8i..8i+7 as a
    mat2x4f (the `sgw` GEMV).  `storage`: which loader of the format (u32 words or typed f16),
    falling back to u32 where the format has no f16 one (or no f16 one of this width)."""
    name_ = _loader(fmt, storage)
    if not kernels.exists(f"formats/{name_}{_SUFFIX[vec]}"):
        name_ = _loader(fmt, "u32")
    return kernels.snippet(f"formats/{name_}{_SUFFIX[vec]}", B=binding, N=name)


def has_q(fmt: str) -> bool:
    """`fmt` has the block-word loaders of the `sgb` GEMV (`<fmt>.q.wgsl`: Q4_1)."""
    f = formats.get(fmt)
    return f.wgsl is not None and kernels.exists(f"formats/{f.wgsl}.q")


def has_w(fmt: str) -> bool:
    """`fmt` has the 16-byte run-of-four-blocks loader of the `sgqw` GEMV (`<fmt>.w.wgsl`: Q4_1)."""
    f = formats.get(fmt)
    return f.wgsl is not None and kernels.exists(f"formats/{f.wgsl}.w")


def has_v8(fmt: str) -> bool:
    """`fmt` has the 8-value loader of the `sgw` GEMV (`<fmt>.v8.wgsl`: f32, f16)."""
    f = formats.get(fmt)
    return f.wgsl is not None and kernels.exists(f"formats/{f.wgsl}.v8")


def norm_weight(fmt: str, offset=None, storage: str = "u32", binding: int = 1, name: str = "w") -> str:
    """A norm's weight loader `ld<name>(i)`: w, or offset + w (Gemma's 1 + w, added in f32 like numpy)."""
    if not offset:
        return wdecl(binding, name, fmt, 1, storage)
    return (wdecl(binding, f"{name}0", fmt, 1, storage)
            + f"\nfn ld{name}(i: u32) -> f32 {{ return ld{name}0(i) + {f32lit(offset)}; }}")


def block_wdecl(binding: int, name: str, fmt: str, storage: str = "u32") -> str | None:
    """The optional whole-block loader `ld<name>(b) -> array<vec4f, block / 4>` of a block
    format (`kernels/formats/<fmt>.blk.wgsl`), or None."""
    f = formats.get(fmt)
    if not f.quantized or f.wgsl is None:
        return None
    name_ = f.loader(storage)
    if not kernels.exists(f"formats/{name_}.blk"):
        return None
    return kernels.snippet(f"formats/{name_}.blk", B=binding, N=name)


def mulv(vec) -> str:
    if vec == 8:
        return "fn mulv(a: mat2x4f, b: mat2x4f) -> f32 { return dot(a[0], b[0]) + dot(a[1], b[1]); }"
    if vec in (4, "q", "w"):
        return "fn mulv(a: vec4f, b: vec4f) -> f32 { return dot(a, b); }"
    return "fn mulv(a: f32, b: f32) -> f32 { return a * b; }"


def vwidth(vec) -> int:
    """Values per input load of a GEMV reading weights as `vec` (the "q" / "w" block words: vec4)."""
    return 4 if vec in ("q", "w") else vec


def vtype(vec) -> str:
    """The type of one weight load of a GEMV reading weights as `vec`."""
    return {4: "vec4f", "q": "vec4f", "w": "vec4f", 8: "mat2x4f"}.get(vec, "f32")


def f32lit(v) -> str:
    return repr(float(v))


def act_in(binding: int, name: str) -> str:
    return f"@group(0) @binding({binding}) var<storage, read> {name}: array<f32>;"


def act_out(binding: int, name: str) -> str:
    return f"@group(0) @binding({binding}) var<storage, read_write> {name}: array<f32>;"


def norm_input(inplace: bool) -> str:
    """`ldx(i)`: the norm's input, the output buffer itself when in place."""
    if inplace:
        return "fn ldx(i: u32) -> f32 { return y[i]; }"
    return act_in(3, "xin") + "\nfn ldx(i: u32) -> f32 { return xin[i]; }"


def gemv_weight(wdecl_: str, vec) -> str:
    """A single GEMV weight: `ldw_at(n, k)` over rows of K (vec units); vec "q": `dmw_at(n, b)`
    and `qsw_at(n, b, j)` over rows of NB blocks; vec "w": `quadw_at(n, g, i)` over rows of NU
    runs of four blocks."""
    if vec == "w":
        return f"{wdecl_}\nfn quadw_at(n: u32, g: u32, i: u32) -> vec4u {{ return quadw(n * NU + g, i); }}"
    if vec == "q":
        return (f"{wdecl_}\nfn dmw_at(n: u32, b: u32) -> vec2f {{ return dmw(n * NB + b); }}\n"
                "fn qsw_at(n: u32, b: u32, j: u32) -> u32 { return qsw(n * NB + b, j); }")
    return (f"{wdecl_}\n{mulv(vec)}\n"
            f"fn ldw_at(n: u32, k: u32) -> {vtype(vec)} {{ return ldw(n * K + k); }}")


GEMV_STORE = (act_out(4, "y") + "\n"
              "fn store(t: u32, n: u32, v: f32) { y[t * YS + N0 + n] = v + ldb(N0 + n); }")

# the residual add folded into the store: y is the residual stream (`x += linear(a)`)
GEMV_STORE_ADD = (act_out(4, "y") + "\n"
                  "fn store(t: u32, n: u32, v: f32) { let i = t * YS + N0 + n; y[i] = y[i] + (v + ldb(N0 + n)); }")


def gemv_input(vec, norm=None, storage: str = "u32") -> str:
    """ADECL: the GEMV input `a` (binding 3) with `scl(v, k)` / `fin(v, ss)`. `norm` =
    (weight format, eps, width in values, offset): the input's RMSNorm folded in, weight at
    binding 5: y = (sum_k W[n,k] a[k] (w[k] + offset)) / sqrt(sum_k a[k]^2 / D + eps), the sum
    of squares taken from the same loads (every column's reduction walks the whole row anyway);
    offset: Gemma's 1 + w, added to each loaded lane in f32 like `norm_weight` (0: none).
    vec 8 (`sgw`) reads its input as vec4 pairs."""
    if vec == 8:
        vec = 4
    vt = vtype(vec)
    head = (f"@group(0) @binding(3) var<storage, read> a: array<{vt}>;\n"
            "const AWG: bool = false;\nfn prologue(l: u32, nl: u32) {}")
    if norm is None:
        return (f"{head}\nconst NORM: bool = false;\n"
                f"fn scl(v: {vt}, k: u32) -> {vt} {{ return v; }}\n"
                "fn fin(v: f32, ss: f32) -> f32 { return v; }")
    fmt, eps, width, offset = norm
    nvec = 4 if vec in ("q", "w") else vec
    nw = f"(ldnw(k) + {f32lit(offset)})" if offset else "ldnw(k)"
    return (f"{head}\nconst NORM: bool = true;\n{wdecl(5, 'nw', fmt, nvec, storage)}\n"
            f"fn scl(v: {vt}, k: u32) -> {vt} {{ return v * {nw}; }}\n"
            f"fn fin(v: f32, ss: f32) -> f32 {{ return v * (1.0 / sqrt(ss / {width}.0 + {f32lit(eps)})); }}")


def merged_attention_input(vec: int, KV: int, H: int, HD: int, NS: int, SL: int) -> str:
    """ADECL of a decode GEMV over a split attention's partials (binding 3), merged into
    workgroup memory first (kernels/attention_merge_input.wgsl)."""
    put = ("vec4f(merged(4u * i, na), merged(4u * i + 1u, na), merged(4u * i + 2u, na), "
           "merged(4u * i + 3u, na))" if vec == 4 else "merged(i, na)")
    return kernels.snippet("attention_merge_input", VT=vtype(vec), KV=KV, H=H, HD=HD, NS=NS, SL=SL, HNS=H * NS,
                           PUT=put)


def no_pair(vec) -> str:
    """PAIRDECL of a plain GEMV (one weight per column)."""
    vt = vtype(vec)
    if vec == "w":
        return ("const PAIR: bool = false;\nfn quadw2_at(n: u32, g: u32, i: u32) -> vec4u { return vec4u(); }\n"
                "fn store2(t: u32, n: u32, g: f32, u: f32) {}")
    if vec == "q":
        return ("const PAIR: bool = false;\nfn dmw2_at(n: u32, b: u32) -> vec2f { return vec2f(); }\n"
                "fn qsw2_at(n: u32, b: u32, j: u32) -> u32 { return 0u; }\n"
                "fn store2(t: u32, n: u32, g: f32, u: f32) {}")
    return (f"const PAIR: bool = false;\nfn ldw2_at(n: u32, k: u32) -> {vt} {{ return {vt}(); }}\n"
            "fn store2(t: u32, n: u32, g: f32, u: f32) {}")


# gate/up activations a weight pair's store applies (kernels/activations.wgsl): op kind -> function
PAIR_ACT = {"silu_mul": "silu", "gelu_tanh_mul": "gelu_tanh"}


def act_pair(act: str, gate_fmt: str, up_fmt: str, rows: int, vec, storage: str = "u32") -> tuple[str, str, str]:
    """(WDECL, YDECL, PAIRDECL) of gate/up in one GEMV with act(g)*u in its store (act: a
    function of kernels/activations.wgsl, the elementwise kernels' own): column n reads gate
    row n (binding 10) and up row n (binding 11) against the same input load."""
    vt = vtype(vec)
    wd = f"{mulv(vec)}\n{wdecl(10, 'w0', gate_fmt, vec, storage)}\n{wdecl(11, 'w1', up_fmt, vec, storage)}\n"
    if vec == "w":
        wd += "fn quadw_at(n: u32, g: u32, i: u32) -> vec4u { return quadw0(n * NU + g, i); }"
        pair = "fn quadw2_at(n: u32, g: u32, i: u32) -> vec4u { return quadw1(n * NU + g, i); }"
    elif vec == "q":
        wd += ("fn dmw_at(n: u32, b: u32) -> vec2f { return dmw0(n * NB + b); }\n"
               "fn qsw_at(n: u32, b: u32, j: u32) -> u32 { return qsw0(n * NB + b, j); }")
        pair = ("fn dmw2_at(n: u32, b: u32) -> vec2f { return dmw1(n * NB + b); }\n"
                "fn qsw2_at(n: u32, b: u32, j: u32) -> u32 { return qsw1(n * NB + b, j); }")
    else:
        wd += f"fn ldw_at(n: u32, k: u32) -> {vt} {{ return ldw0(n * K + k); }}"
        pair = f"fn ldw2_at(n: u32, k: u32) -> {vt} {{ return ldw1(n * K + k); }}"
    yd = (act_out(30, "y") + "\nfn store(t: u32, n: u32, v: f32) {}")
    pd = (f"const PAIR: bool = true;\n{pair}\n{kernels.snippet('activations')}"
          f"fn store2(t: u32, n: u32, g: f32, u: f32) {{ y[t * {rows}u + n] = {act}(g) * u; }}")
    return wd, yd, pd


def multi_gemv(parts, vec, storage: str = "u32") -> tuple[str, str]:
    """(WDECL, YDECL) of one GEMV over the concatenated rows of several weights sharing an
    input: `parts` = [(rows, weight format, bias format or None)]; weight i at binding 10+i,
    its bias at 20+i, its output at 30+i."""
    decl, load, dml, qsl, quad, store, e = [mulv(vec)], [], [], [], [], [], 0
    for i, (n, wfmt, bfmt) in enumerate(parts):
        decl.append(wdecl(10 + i, f"w{i}", wfmt, vec, storage))
        bias = ""
        if bfmt is not None:
            decl.append(wdecl(20 + i, f"b{i}", bfmt, 1, storage))
            bias = f" + ldb{i}(n - {e}u)"
        decl.append(act_out(30 + i, f"y{i}"))
        cond = f"if (n < {e + n}u) " if i < len(parts) - 1 else ""
        load.append(f"{cond}{{ return ldw{i}((n - {e}u) * K + k); }}")
        dml.append(f"{cond}{{ return dmw{i}((n - {e}u) * NB + b); }}")
        qsl.append(f"{cond}{{ return qsw{i}((n - {e}u) * NB + b, j); }}")
        quad.append(f"{cond}{{ return quadw{i}((n - {e}u) * NU + g, j); }}")
        store.append(f"{cond}{{ y{i}[t * {n}u + n - {e}u] = v{bias}; return; }}")
        e += n
    if vec == "w":
        wd = "\n".join(decl) + "\nfn quadw_at(n: u32, g: u32, j: u32) -> vec4u {\n  " + "\n  ".join(quad) + "\n}"
    elif vec == "q":
        wd = ("\n".join(decl) + "\nfn dmw_at(n: u32, b: u32) -> vec2f {\n  " + "\n  ".join(dml) + "\n}"
              "\nfn qsw_at(n: u32, b: u32, j: u32) -> u32 {\n  " + "\n  ".join(qsl) + "\n}")
    else:
        wd = "\n".join(decl) + f"\nfn ldw_at(n: u32, k: u32) -> {vtype(vec)} {{\n  " + "\n  ".join(load) + "\n}"
    yd = "fn store(t: u32, n: u32, v: f32) {\n  " + "\n  ".join(store) + "\n}"
    return wd, yd


def _gemv_registers(R: int, TB: int) -> list:
    """The named registers of a subgroup-per-R-columns GEMV (sgb / sgw): column n<r> (clamped),
    sums acc<r>_<t> (and acp<r>_<t>, the pair's second weight), the norm's ss<t>."""
    decl = [f"  let n{r} = min(c0 + {r}u, N - 1u);" for r in range(R)]
    decl += [f"  var acc{r}_{t} = 0.0;\n  var acp{r}_{t} = 0.0;" for r in range(R) for t in range(TB)]
    return decl + [f"  var ss{t} = 0.0;" for t in range(TB)]


def _block_word_loads(u: int, r: int) -> list:
    """Unit u's loads for column n<r> of a block-word GEMV (sgb / sgq): (d, m) dm<u>_<r> and the
    nibble word q<u>_<r>, and the pair's second weight (dmp, qp)."""
    return [f"    let dm{u}_{r} = dmw_at(n{r}, b{u});", f"    let q{u}_{r} = qsw_at(n{r}, b{u}, j{u});",
            f"    var dmp{u}_{r} = vec2f();", f"    var qp{u}_{r} = 0u;",
            f"    if (PAIR) {{ dmp{u}_{r} = dmw2_at(n{r}, b{u}); qp{u}_{r} = qsw2_at(n{r}, b{u}, j{u}); }}"]


def sgb_code(R: int, U: int, TB: int) -> dict:
    """DECL / BODY / REDUCE of linear_sgb.wgsl written out for R columns, U units per trip and
    TB tokens: every value a named register (acc<r>_<t>: column r, token t)."""
    rs, us, ts = range(R), range(U), range(TB)
    decl, body = _gemv_registers(R, TB), []
    for u in us:                                           # all loads of the trip first
        body += [f"    let u{u} = u0 + {u}u * sgs;",
                 f"    let k{u} = select(0.0, 1.0, u{u} < NB * 4u);     // 0: past the row end",
                 f"    let b{u} = min(u{u}, NB * 4u - 1u) >> 2u;",
                 f"    let j{u} = u{u} & 3u;"]
        for t in ts:
            body += [f"    let o{u}_{t} = min(t0 + {t}u, p.T - 1u) * K + b{u} * 8u + j{u};",
                     f"    let al{u}_{t} = a[o{u}_{t}] * k{u};",
                     f"    let ah{u}_{t} = a[o{u}_{t} + 4u] * k{u};"]
        body += [ln for r in rs for ln in _block_word_loads(u, r)]
    for u in us:
        for t in ts:
            body += [f"    if (NORM) {{ ss{t} += dot(al{u}_{t}, al{u}_{t}) + dot(ah{u}_{t}, ah{u}_{t}); }}",
                     f"    let xl{u}_{t} = scl(al{u}_{t}, b{u} * 8u + j{u});",
                     f"    let xh{u}_{t} = scl(ah{u}_{t}, b{u} * 8u + 4u + j{u});",
                     f"    let sx{u}_{t} = dot(xl{u}_{t} + xh{u}_{t}, vec4f(1.0));"]
        for r in rs:
            for w, dm, q, acc in (("", "dm", "q", "acc"), ("p", "dmp", "qp", "acp")):
                lines = [f"let lo{w}{u}_{r} = nib({q}{u}_{r});", f"let hi{w}{u}_{r} = nib({q}{u}_{r} >> 4u);",
                         f"let sc{w}{u}_{r} = {dm}{u}_{r}.x * 255.0;"]
                lines += [f"{acc}{r}_{t} += sc{w}{u}_{r} * (dot(lo{w}{u}_{r}, xl{u}_{t}) + dot(hi{w}{u}_{r}, xh{u}_{t}))"
                          f" + {dm}{u}_{r}.y * sx{u}_{t};" for t in ts]
                body.append(("    " if not w else "    if (PAIR) { ") + " ".join(lines) + (" }" if w else ""))
    return {"DECL": "\n".join(decl), "BODY": "\n".join(body), "REDUCE": _subgroup_reduce(R, TB)}


def sgq_code(R: int, U: int) -> dict:
    """DECL / BODY / REDUCE of linear_sgq.wgsl (one token) written out for R columns and U units
    per trip: sgb_code's units and registers with the input read as packed int8 words and
    per-block (d, sum / 4) from workgroup memory, two dot4I8Packed per (unit, column)."""
    rs, us = range(R), range(U)
    decl, body = _gemv_registers(R, 1), []
    for u in us:                                           # all loads of the trip first
        body += [f"    let u{u} = u0 + {u}u * sgs;",
                 f"    let c{u} = min(u{u}, NU - 1u);",
                 f"    let b{u} = c{u} >> 2u;",
                 f"    let j{u} = c{u} & 3u;",
                 f"    let xl{u} = xq[2u * b{u}][j{u}];",
                 f"    let xh{u} = xq[2u * b{u} + 1u][j{u}];",
                 f"    let xb{u} = xb[b{u}] * select(0.0, 1.0, u{u} < NU);     // 0: past the row end"]
        body += [ln for r in rs for ln in _block_word_loads(u, r)]
    for u in us:
        for r in rs:
            for w, dm, q, acc in (("", "dm", "q", "acc"), ("p", "dmp", "qp", "acp")):
                line = (f"let i{w}{u}_{r} = dot4I8Packed({q}{u}_{r} & M4, xl{u}) "
                        f"+ dot4I8Packed(({q}{u}_{r} >> 4u) & M4, xh{u}); "
                        f"{acc}{r}_0 += {dm}{u}_{r}.x * xb{u}.x * f32(i{w}{u}_{r}) + {dm}{u}_{r}.y * xb{u}.y;")
                body.append(f"    if (PAIR) {{ {line} }}" if w else f"    {line}")
    return {"DECL": "\n".join(decl), "BODY": "\n".join(body), "REDUCE": _subgroup_reduce(R, 1), "NU": "NB * 4u",
            "XQI": "2u * b + k", "XBI": "b"}


def _quad_word(v: str, k: int) -> str:
    """Word k (0..19) of a run of four Q4_1 blocks held as the vec4 registers v_0..v_4."""
    return f"{v}_{k // 4}.{'xyzw'[k % 4]}"


def sgqw_code(R: int, U: int) -> dict:
    """DECL / BODY / REDUCE of linear_sgq.wgsl's WIDE form (`sgqwR[uU]`) for R columns and U
    units per trip, a unit being a run of four blocks (128 values): per column 5 vec4 weight
    loads (all of a trip's before any arithmetic), per unit 8 vec4 of packed int8 input and 4
    blocks' (d, sum / 4) from workgroup memory shared by the R columns; per block 8 dot4I8Packed
    and y += d_w d_x i + m_w sum(x) (4 * (sum / 4): exact)."""
    rs, us = range(R), range(U)
    decl, body = _gemv_registers(R, 1), []
    for u in us:                                           # all loads of the trip first
        body += [f"    let u{u} = u0 + {u}u * sgs;",
                 f"    let g{u} = min(u{u}, NU - 1u);",
                 f"    let k{u} = select(0.0, 1.0, u{u} < NU);     // 0: past the row end"]
        body += [f"    let x{u}_{h} = xq[{h}u * NU + g{u}];" for h in range(8)]        # plane h of run g
        body += [f"    let xb{u}_{i} = xb[{i}u * NU + g{u}] * k{u};" for i in range(4)]
        for r in rs:
            body += [f"    let w{u}_{r}_{v} = quadw_at(n{r}, g{u}, {v}u);" for v in range(5)]
            body += [f"    var p{u}_{r}_{v} = vec4u();" for v in range(5)]
            body.append("    if (PAIR) { " + " ".join(f"p{u}_{r}_{v} = quadw2_at(n{r}, g{u}, {v}u);"
                                                      for v in range(5)) + " }")
    for u in us:
        for r in rs:
            for w, acc in (("w", "acc"), ("p", "acp")):
                lines = []
                for i in range(4):                       # block i: (d, m) word 5i, nibbles 5i+1..5i+4
                    q = [_quad_word(f"{w}{u}_{r}", 5 * i + 1 + j) for j in range(4)]
                    dots = " + ".join(f"dot4I8Packed({q[j]} & M4, x{u}_{2 * i}.{'xyzw'[j]}) + "
                                      f"dot4I8Packed(({q[j]} >> 4u) & M4, x{u}_{2 * i + 1}.{'xyzw'[j]})"
                                      for j in range(4))
                    v = f"{w}{i}{u}_{r}"
                    lines += [f"let d{v} = unpack2x16float({_quad_word(f'{w}{u}_{r}', 5 * i)});",
                              f"let i{v} = {dots};",
                              f"{acc}{r}_0 += d{v}.x * xb{u}_{i}.x * f32(i{v}) + d{v}.y * (4.0 * xb{u}_{i}.y);"]
                if w == "p":
                    body.append("    if (PAIR) {\n      " + "\n      ".join(lines) + "\n    }")
                else:
                    body += [f"    {ln}" for ln in lines]
    return {"DECL": "\n".join(decl), "BODY": "\n".join(body), "REDUCE": _subgroup_reduce(R, 1), "NU": "NB / 4u",
            # block b = run g = b / 4, block i = b % 4 of it: plane 2i + k, and xb's plane i
            "XQI": "((b & 3u) * 2u + k) * NU + (b >> 2u)", "XBI": "(b & 3u) * NU + (b >> 2u)"}


def sgw_code(R: int, U: int, TB: int, subgroups: bool = True) -> dict:
    """DECL / BODY / REDUCE (and the lane set-up) of linear_sgw.wgsl written out for R columns,
    U units of 8 values per trip and TB tokens: every value a named register (acc<r>_<t>:
    column r, token t); without subgroups (`wgw`) groups of 32 lanes reduce in workgroup memory."""
    rs, us, ts = range(R), range(U), range(TB)
    decl, body = _gemv_registers(R, TB), []
    for u in us:                                           # all loads of the trip first
        body += [f"    let i{u} = u0 + lane + {u}u * sgs;",
                 f"    let m{u} = select(0.0, 1.0, i{u} < K);     // 0: past the row end",
                 f"    let c{u} = min(i{u}, K - 1u);"]
        for t in ts:
            body += [f"    let o{u}_{t} = min(t0 + {t}u, p.T - 1u) * 2u * K + 2u * c{u};",
                     f"    let al{u}_{t} = a[o{u}_{t}] * m{u};",
                     f"    let ah{u}_{t} = a[o{u}_{t} + 1u] * m{u};"]
        for r in rs:
            body += [f"    let w{u}_{r} = ldw_at(n{r}, c{u});",
                     f"    var wp{u}_{r} = mat2x4f();",
                     f"    if (PAIR) {{ wp{u}_{r} = ldw2_at(n{r}, c{u}); }}"]
    for u in us:
        for t in ts:
            body += [f"    if (NORM) {{ ss{t} += dot(al{u}_{t}, al{u}_{t}) + dot(ah{u}_{t}, ah{u}_{t}); }}",
                     f"    let xl{u}_{t} = scl(al{u}_{t}, 2u * c{u});",
                     f"    let xh{u}_{t} = scl(ah{u}_{t}, 2u * c{u} + 1u);"]
            for r in rs:
                body += [f"    acc{r}_{t} += dot(w{u}_{r}[0], xl{u}_{t}) + dot(w{u}_{r}[1], xh{u}_{t});",
                         f"    if (PAIR) {{ acp{r}_{t} += dot(wp{u}_{r}[0], xl{u}_{t}) + dot(wp{u}_{r}[1], xh{u}_{t}); }}"]
    code = {"DECL": "\n".join(decl), "BODY": "\n".join(body)}
    if subgroups:
        return {**code, "REDUCE": _subgroup_reduce(R, TB), "GROUPDECL": "",
                "LANE_ARGS": ",\n        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32",
                "LANE_LET": ""}
    groupdecl, reduce = _group_reduce(R, TB)
    return {**code, "REDUCE": reduce, "GROUPDECL": groupdecl,
            "LANE_ARGS": "", "LANE_LET": "  let lane = l % 32u;\n  let sgs = 32u;     // a group of 32 lanes stands in for a subgroup"}


def _store(r: int, t: int) -> str:
    """Lane 0's store of column c0 + r, token t0 + t (s<r>_<t>, s2<r>_<t>: its sums, q<t>: the norm's)."""
    return (f"  if (c0 + {r}u < N && lane == 0u && t0 + {t}u < p.T) {{\n"
            f"    if (PAIR) {{ store2(t0 + {t}u, c0 + {r}u, fin(s{r}_{t}, q{t}), fin(s2{r}_{t}, q{t})); }}\n"
            f"    else {{ store(t0 + {t}u, c0 + {r}u, fin(s{r}_{t}, q{t})); }}\n  }}")


def _group_reduce(R: int, TB: int) -> tuple[str, str]:
    """(GROUPDECL, REDUCE): `_subgroup_reduce` without subgroups: every named sum of each group
    of 32 lanes summed in workgroup memory (one tree, 5 barriers, all sums at once), then lane 0
    stores."""
    names = [f"ss{t}" for t in range(TB)] + [f"{a}{r}_{t}" for r in range(R) for t in range(TB) for a in ("acc", "acp")]
    at = {n: i for i, n in enumerate(names)}
    slot = lambda n, off="l": f"wpart[{at[n]}u * 128u + {off}]"        # noqa: E731
    red = [f"  {slot(n)} = {n};" for n in names]
    red += ["  workgroupBarrier();", "  for (var s = 16u; s > 0u; s = s >> 1u) {", "    if (lane < s) {"]
    red += [f"      {slot(n)} += {slot(n, 'l + s')};" for n in names]
    red += ["    }", "    workgroupBarrier();", "  }", "  let g0 = l - lane;"]
    for t in range(TB):
        red.append(f"  let q{t} = {slot(f'ss{t}', 'g0')};")
        for r in range(R):
            red += [f"  let s{r}_{t} = {slot(f'acc{r}_{t}', 'g0')};",
                    f"  let s2{r}_{t} = {slot(f'acp{r}_{t}', 'g0')};", _store(r, t)]
    red.append("  workgroupBarrier();          // the next round writes wpart again")
    return f"var<workgroup> wpart: array<f32, {group_reduce_floats(R, TB)}>;", "\n".join(red)


def group_reduce_floats(R: int, TB: int) -> int:
    """Workgroup floats of the `wgw` GEMV's sums (`_group_reduce`: ss, acc and acp per token)."""
    return (TB + 2 * R * TB) * 128


def _subgroup_reduce(R: int, TB: int) -> str:
    """The end of a subgroup-per-R-columns GEMV (sgb / sgw): one subgroupAdd per (column, token),
    lane 0 stores (store, or store2 for a gate/up pair)."""
    red = []
    for t in range(TB):
        red.append(f"  var q{t} = 0.0;\n  if (NORM) {{ q{t} = subgroupAdd(ss{t}); }}")
        for r in range(R):
            red += [f"  let s{r}_{t} = subgroupAdd(acc{r}_{t});",
                    f"  var s2{r}_{t} = 0.0;\n  if (PAIR) {{ s2{r}_{t} = subgroupAdd(acp{r}_{t}); }}", _store(r, t)]
    return "\n".join(red)


def _tree(terms: list, op: str = "+") -> str:
    """`terms` combined pairwise (a balanced tree: independent operations, a short chain);
    op "+" or "max"."""
    while len(terms) > 1:
        pairs = [f"({a} + {b})" if op == "+" else f"max({a}, {b})" for a, b in zip(terms[::2], terms[1::2])]
        terms = pairs + terms[len(pairs) * 2:]
    return terms[0]


def attn_dec_fits(HD: int, SL: int) -> bool:
    """attention_dec's shapes: rows of vec4 whose halves are whole vec4s (RoPE), at most one
    per lane, and 128 lanes shared evenly by the SL keys of a split."""
    return HD % 8 == 0 and HD // 4 <= 128 and 128 % SL == 0


def attn_dec_code(HD: int, SL: int) -> dict:
    """The written-out parts of attention_dec.wgsl for head dim HD and SL keys per split: every
    load of a lane a named register issued before the arithmetic on it; indices past the row
    (or keys past the split) clamped and weighted 0. Also its HV / HQ / LPK / KG constants."""
    HV, LPK = HD // 4, 128 // SL
    KG = 128 // HV
    NQ, NV = -(-HV // LPK), -(-SL // KG)

    def score(load):                     # lane part r of a key: vec4s r, r + LPK, ...
        idx, ok, lines = [], [], []
        for i in range(NQ):
            c = f"r + {LPK * i}u"
            tail = LPK * i + LPK - 1 >= HV
            idx.append(f"min({c}, {HV - 1}u)" if tail else c)
            ok.append(f"{c} < {HV}u" if tail else None)
        lines += [f"    let kx{i} = {load(c)};" for i, c in enumerate(idx)]
        lines += [f"    let qx{i} = qs[{c}];" for i, c in enumerate(idx)]
        terms = [f"dot(kx{i}, qx{i})" if ok[i] is None else f"select(0.0, dot(kx{i}, qx{i}), {ok[i]})"
                 for i in range(NQ)]
        return "\n".join(lines + [f"    e = {_tree(terms)};"])

    ssum = [f"    let t{u} = sc[l * LPK + {u}u];" for u in range(LPK)]
    ssum.append(f"    pw[l] = select(-3.0e38, {_tree([f't{u}' for u in range(LPK)])}, k0 + l < k1);")
    mx = [f"  let w{j} = pw[{j}u];" for j in range(SL)]
    mx.append(f"  let m = {_tree([f'w{j}' for j in range(SL)], 'max')};")
    val, wts = [], []                    # lane (g, d): keys g, g + KG, ...
    for i in range(NV):
        tail = KG * i + KG - 1 >= SL
        val += [f"      let j{i} = g + {KG * i}u;",
                f"      let va{i} = vc[(vb + min(k0 + j{i}, pos - 1u)) * HV + d];"]
        wts += [f"      let pe{i} = pw[{f'min(j{i}, {SL - 1}u)' if tail else f'j{i}'}];",
                f"      let p{i} = select(0.0, exp(pe{i} - m), k0 + j{i} < pos{f' && j{i} < {SL}u' if tail else ''});"]
    val += wts
    val += [f"      acc = {_tree([f'va{i} * p{i}' for i in range(NV)])};",
            f"      ls = {_tree([f'p{i}' for i in range(NV)])};"]
    red = [f"    let a{g} = wa[{g * HV}u + l];" for g in range(KG)]
    red += [f"    let lw{g} = wl[{g}u];" for g in range(KG)]
    red += [f"    let a = {_tree([f'a{g}' for g in range(KG)])};",
            f"    let L = {_tree([f'lw{g}' for g in range(KG)])};"]
    return {"HV": HV, "HQ": HV // 2, "LPK": LPK, "KG": KG,
            "SCORE_CACHED": score(lambda c: f"kc[b + {c}]"), "SCORE_CUR": score(lambda c: f"cur_key(kvh, {c})"),
            "SCORE_SUM": "\n".join(ssum), "MAX": "\n".join(mx), "VALUES": "\n".join(val),
            "REDUCE": "\n".join(red)}

ELEMENTWISE = {                     # op kind -> (input names, body over index i)
    "silu_mul": (("a", "b"), "y[i] = silu(a[i]) * b[i];"),
    "add": (("a", "b"), "y[i] = a[i] + b[i];"),
    "gelu": (("a",), "y[i] = gelu(a[i]);"),
    "gelu_tanh": (("a",), "y[i] = gelu_tanh(a[i]);"),
    "gelu_tanh_mul": (("a", "b"), "y[i] = gelu_tanh(a[i]) * b[i];"),
    "scale": (("a",), "y[i] = a[i] * VALUE;"),     # VALUE: a const the lowering prepends
}


def elementwise(kind: str, inplace_of: list) -> tuple[str, str, list]:
    """(DECL, BODY, bindings of the inputs) of elementwise op `kind`; `inplace_of[j]` says
    input j is the output buffer itself (read through `y`)."""
    names, body = ELEMENTWISE[kind]
    lines, bound = [], []
    for j, nm in enumerate(names):
        if inplace_of[j]:
            body = body.replace(f"{nm}[i]", "y[i]")
            continue
        lines.append(act_in(j + 1, nm))
        bound.append(j)
    lines.append(act_out(3, "y"))
    return "\n".join(lines), body, bound
