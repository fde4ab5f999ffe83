"""The WGSL fragments the lowering splices into kernel templates (`${WDECL}`, `${BDECL}`, ...).

Kernels live in `pyapp/kernels/*.wgsl`; a weight's loader comes from its format's entry
(`pyapp.formats`, `kernels/formats/<fmt>[.vec4].wgsl`); this module only glues them.
"""
from __future__ import annotations

from .. import formats, kernels
from .device import GpuError

NO_BIAS = "fn ldb(i: u32) -> f32 { return 0.0; }"


def wdecl(binding: int, name: str, fmt: str, vec: int) -> str:
    """Declaration of weight binding `name` and its loader `ld<name>(i)`: value i (vec 1) or
    values 4i..4i+3 as a vec4f (vec 4), dequantized in registers."""
    f = formats.get(fmt)
    if f.wgsl is None:
        raise GpuError(f"weight format {f.name} has no WebGPU loader")
    return kernels.snippet(f"formats/{f.wgsl}" + (".vec4" if vec == 4 else ""), B=binding, N=name)


def norm_weight(fmt: str, offset=None) -> str:
    """A norm's weight loader `ldw(i)`: w, or offset + w (Gemma's 1 + w, added in f32 like numpy)."""
    if not offset:
        return wdecl(1, "w", fmt, 1)
    return wdecl(1, "w0", fmt, 1) + f"\nfn ldw(i: u32) -> f32 {{ return ldw0(i) + {f32lit(offset)}; }}"


def block_wdecl(binding: int, name: str, fmt: str) -> str | None:
    """The optional whole-block loader `ld<name>(b) -> array<vec4f, block / 4>` of a block
    format (`kernels/formats/<fmt>.blk.wgsl`), or None."""
    f = formats.get(fmt)
    if not f.quantized or f.wgsl is None or not kernels.exists(f"formats/{f.wgsl}.blk"):
        return None
    return kernels.snippet(f"formats/{f.wgsl}.blk", B=binding, N=name)


def mulv(vec: int) -> str:
    if vec == 4:
        return "fn mulv(a: vec4f, b: vec4f) -> f32 { return dot(a, b); }"
    return "fn mulv(a: f32, b: f32) -> f32 { return a * b; }"


def vtype(vec: int) -> str:
    return "vec4f" if vec == 4 else "f32"


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


def gemv_weight(wdecl_: str, vec: int) -> str:
    """A single GEMV weight: `ldw_at(n, k)` over rows of K (vec units)."""
    return (f"{wdecl_}\n{mulv(vec)}\n"
            f"fn ldw_at(n: u32, k: u32) -> {vtype(vec)} {{ return ldw(n * K + k); }}")


GEMV_STORE = (act_out(4, "y") + "\n"
              "fn store(t: u32, n: u32, v: f32) { y[t * YS + N0 + n] = v + ldb(N0 + n); }")

# the residual add folded into the store: y is the residual stream (`x += linear(a)`)
GEMV_STORE_ADD = (act_out(4, "y") + "\n"
                  "fn store(t: u32, n: u32, v: f32) { let i = t * YS + N0 + n; y[i] = y[i] + (v + ldb(N0 + n)); }")


def gemv_input(vec: int, norm=None) -> str:
    """ADECL: the GEMV input `a` (binding 3) with `scl(v, k)` / `fin(v, ss)`. `norm` =
    (weight format, eps, width in values): the input's RMSNorm folded in, weight at binding 5:
    y = (sum_k W[n,k] a[k] w[k]) / sqrt(sum_k a[k]^2 / D + eps), the sum of squares taken
    from the same loads (every column's reduction walks the whole row anyway)."""
    vt = vtype(vec)
    head = (f"@group(0) @binding(3) var<storage, read> a: array<{vt}>;\n"
            "const AWG: bool = false;\nfn prologue(l: u32, nl: u32) {}")
    if norm is None:
        return (f"{head}\nconst NORM: bool = false;\n"
                f"fn scl(v: {vt}, k: u32) -> {vt} {{ return v; }}\n"
                "fn fin(v: f32, ss: f32) -> f32 { return v; }")
    fmt, eps, width = norm
    return (f"{head}\nconst NORM: bool = true;\n{wdecl(5, 'nw', fmt, vec)}\n"
            f"fn scl(v: {vt}, k: u32) -> {vt} {{ return v * ldnw(k); }}\n"
            f"fn fin(v: f32, ss: f32) -> f32 {{ return v * (1.0 / sqrt(ss / {width}.0 + {f32lit(eps)})); }}")


def merged_attention_input(vec: int, KV: int, H: int, HD: int, NS: int, SL: int) -> str:
    """ADECL of a decode GEMV over a split attention's partials (binding 3), merged into
    workgroup memory first (kernels/attention_merge_input.wgsl)."""
    put = ("vec4f(merged(4u * i, na), merged(4u * i + 1u, na), merged(4u * i + 2u, na), "
           "merged(4u * i + 3u, na))" if vec == 4 else "merged(i, na)")
    return kernels.snippet("attention_merge_input", VT=vtype(vec), KV=KV, H=H, HD=HD, NS=NS, SL=SL, HNS=H * NS,
                           PUT=put)


def no_pair(vec: int) -> str:
    """PAIRDECL of a plain GEMV (one weight per column)."""
    vt = vtype(vec)
    return (f"const PAIR: bool = false;\nfn ldw2_at(n: u32, k: u32) -> {vt} {{ return {vt}(); }}\n"
            "fn store2(t: u32, n: u32, g: f32, u: f32) {}")


def silu_pair(gate_fmt: str, up_fmt: str, rows: int, vec: int) -> tuple[str, str, str]:
    """(WDECL, YDECL, PAIRDECL) of gate/up in one GEMV with SiLU(g)*u in its store: column n
    reads gate row n (binding 10) and up row n (binding 11) against the same input load."""
    vt = vtype(vec)
    wd = (f"{mulv(vec)}\n{wdecl(10, 'w0', gate_fmt, vec)}\n{wdecl(11, 'w1', up_fmt, vec)}\n"
          f"fn ldw_at(n: u32, k: u32) -> {vt} {{ return ldw0(n * K + k); }}")
    yd = (act_out(30, "y") + "\nfn store(t: u32, n: u32, v: f32) {}")
    pd = (f"const PAIR: bool = true;\nfn ldw2_at(n: u32, k: u32) -> {vt} {{ return ldw1(n * K + k); }}\n"
          f"fn store2(t: u32, n: u32, g: f32, u: f32) {{ y[t * {rows}u + n] = g / (1.0 + exp(-g)) * u; }}")
    return wd, yd, pd


def multi_gemv(parts, vec: int) -> tuple[str, str]:
    """(WDECL, YDECL) of one GEMV over the concatenated rows of several weights sharing an
    input: `parts` = [(rows, weight format, bias format or None)]; weight i at binding 10+i,
    its bias at 20+i, its output at 30+i."""
    decl, load, store, e = [mulv(vec)], [], [], 0
    for i, (n, wfmt, bfmt) in enumerate(parts):
        decl.append(wdecl(10 + i, f"w{i}", wfmt, vec))
        bias = ""
        if bfmt is not None:
            decl.append(wdecl(20 + i, f"b{i}", bfmt, 1))
            bias = f" + ldb{i}(n - {e}u)"
        decl.append(act_out(30 + i, f"y{i}"))
        cond = f"if (n < {e + n}u) " if i < len(parts) - 1 else ""
        load.append(f"{cond}{{ return ldw{i}((n - {e}u) * K + k); }}")
        store.append(f"{cond}{{ y{i}[t * {n}u + n - {e}u] = v{bias}; return; }}")
        e += n
    wd = "\n".join(decl) + f"\nfn ldw_at(n: u32, k: u32) -> {vtype(vec)} {{\n  " + "\n  ".join(load) + "\n}"
    yd = "fn store(t: u32, n: u32, v: f32) {\n  " + "\n  ".join(store) + "\n}"
    return wd, yd


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
