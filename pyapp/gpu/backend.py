"""The WebGPU executor, shared by both bindings; stdlib-only (numpy is imported
lazily, and only by the CPython conveniences `load` / `forward`).

Design (see docs/gpu.md):
* weights live in GPU buffers, one or more per tensor (tensors larger than the
  device's max storage binding are split by rows into chunks);
* activations are named buffers sized for `max_tokens` rows, allocated once;
* the KV cache is preallocated per layer on the GPU (`new_cache`);
* every op compiles to dispatches of a WGSL kernel specialised by shape
  (pipelines cached by source); bind groups are built once; the dispatch list
  of a step is recorded once per (token count, flags, cache) and replayed;
* one command encoder, one compute pass and one submit per forward step; the
  dynamic values (token count, position, sampling) are one 512-byte uniform
  written once per step; the only readback is the result (one u32 for `step`).
"""
from __future__ import annotations

import json
import math
import os
import struct
from array import array

from .. import kernels
from .. import formats
from ..arch import widths as arch_widths
from ..models import Model
from .device import GpuError

PARAMS_HEAD = 256            # offset of the head's params (T = 1) in the uniform buffer
UNIFORM_BYTES = 512


def _ceil(a, b):
    return -(-a // b)


# ----------------------------------------------------------------------------- shapes

def infer_shapes(model: Model):
    """{tensor name: shape} from the config alone (the browser builds a backend
    before any weight byte arrives)."""
    c = model.config
    D, V = model.hidden, model.vocab
    width = arch_widths(model)
    acts = activation_widths(model, width)
    shapes = {}
    for o in model.ops():
        w = o.weights
        if o.kind == "linear":
            n, k = width[o.outs[0]], acts[o.ins[0]]
            shapes[w["w"]] = (k, n) if o.attrs.get("transposed") else (n, k)
            if w.get("b"):
                shapes[w["b"]] = (n,)
        elif o.kind in ("rms_norm", "layer_norm"):
            for r in ("w", "b"):
                if w.get(r):
                    shapes[w[r]] = (acts[o.ins[0]],)
        elif o.kind == "embed":
            shapes[w["tokens"]] = (V, D)
            if w.get("positions"):
                shapes[w["positions"]] = (c.get("max_position_embeddings") or c.get("n_positions"), D)
            if w.get("token_type"):
                shapes[w["token_type"]] = (c.get("type_vocab_size", 2), D)
    return shapes


def activation_widths(model: Model, width: dict):
    D = model.hidden
    acts = {"x": D, "h": D, "a": model.n_heads * model.head_dim, "e": D, "embedding": D}
    acts.update(width)
    for o in model.ops():
        if o.kind in ("silu_mul", "gelu", "gelu_tanh", "add", "rms_norm", "layer_norm"):
            acts.setdefault(o.outs[0], acts[o.ins[0]])
        elif o.kind == "split":
            for name, s in zip(o.outs, o.attrs["sizes"]):
                acts[name] = s
    return acts


def _widths_from_shapes(model, shapes, extra=None):
    width = dict(extra or {})
    for o in model.ops():
        if o.kind == "linear":
            s = shapes[o.weights["w"]]
            width[o.outs[0]] = s[1] if o.attrs.get("transposed") else s[0]
    return activation_widths(model, width)


# ----------------------------------------------------------------------------- helpers

def wdecl(binding, name, dtype, vec):
    """Declaration of weight binding `name` and its loader `ld<name>(i)`."""
    if vec == 4:
        if dtype == "f32":
            return (f"@group(0) @binding({binding}) var<storage, read> {name}: array<vec4f>;\n"
                    f"fn ld{name}(i: u32) -> vec4f {{ return {name}[i]; }}")
        return (f"@group(0) @binding({binding}) var<storage, read> {name}: array<vec2<u32>>;\n"
                f"fn ld{name}(i: u32) -> vec4f {{ let q = {name}[i]; "
                f"return vec4f(unpack2x16float(q.x), unpack2x16float(q.y)); }}")
    if dtype == "f32":
        return (f"@group(0) @binding({binding}) var<storage, read> {name}: array<f32>;\n"
                f"fn ld{name}(i: u32) -> f32 {{ return {name}[i]; }}")
    return (f"@group(0) @binding({binding}) var<storage, read> {name}: array<u32>;\n"
            f"fn ld{name}(i: u32) -> f32 {{ return unpack2x16float({name}[i >> 1u])[i & 1u]; }}")


def _mulv(vec):
    if vec == 4:
        return "fn mulv(a: vec4f, b: vec4f) -> f32 { return dot(a, b); }"
    return "fn mulv(a: f32, b: f32) -> f32 { return a * b; }"


def _f32lit(v):
    return repr(float(v)) if "e" in repr(float(v)) or "." in repr(float(v)) else f"{float(v)}"


class Tensor:
    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        n = 1
        for s in self.shape:
            n *= s
        self.numel = n
        self.nbytes = formats.get(dtype).nbytes(self.shape)
        self.chunks = []     # [buffer, row0, rows, byte0, nbytes]


class GpuKVCache:
    """Per-layer K/V buffers [Hkv, capacity, hd] on the GPU; `length` tokens valid."""

    def __init__(self, backend, start, stop, capacity):
        m = backend.model
        self.capacity = capacity
        self.length = 0
        self.k, self.v = {}, {}
        nb = m.n_kv_heads * capacity * m.head_dim * 4
        if m.causal:
            for i in range(start, stop):
                self.k[i] = backend.device.create_buffer(nb)
                self.v[i] = backend.device.create_buffer(nb)
        self.nbytes = 2 * nb * len(self.k)
        self.plans = {}

    def truncate(self, n):
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {n}")
        self.length = n


# ----------------------------------------------------------------------------- backend

class GpuBackend:
    name = "wgpu"

    def __init__(self, device, model: Model, start=0, stop=None, embed=None, head=None,
                 dtype="f32", shapes=None, dtypes=None, max_tokens=None, max_positions=None,
                 variants=None, max_binding=None, widths=None):
        self.device = device
        self.model = model
        self.start = start
        self.stop = model.n_layers if stop is None else stop
        self.embed = (start == 0) if embed is None else embed
        self.head = (self.stop == model.n_layers) if head is None else head
        self.ops = model.ops(self.start, self.stop, embed=self.embed, head=self.head)
        self.dtype = dtype
        shapes = dict(shapes) if shapes is not None else infer_shapes(model)
        self.widths = _widths_from_shapes(model, shapes, widths or {})
        self.max_positions = max_positions or min(model.max_context, 2048)
        self.max_tokens = max_tokens or min(self.max_positions, 512)
        self.max_binding = min(max_binding or 1 << 62, device.limits["max_storage_binding"],
                               device.limits["max_buffer"])
        self.variants = {"linear": "row", "norm_wg": 1, "attention": "row"}
        if variants:
            self.variants.update(variants)
        self.stats = {"steps": 0, "dispatches": 0, "submits": 0, "readbacks": 0,
                      "plans_built": 0}
        # weights
        self.tensors = {}
        splittable = set()
        for o in self.ops:
            if o.kind == "embed":
                splittable.add(o.weights["tokens"])
            elif o.kind == "linear" and not o.attrs.get("transposed"):
                splittable.add(o.weights["w"])
        for n in model.tensors(self.ops):
            dt = _dtype_name((dtypes or {}).get(n, dtype))
            t = self.tensors[n] = Tensor(n, shapes[n], dt)
            self._alloc(t, n in splittable)
        # activations, ids, params, rope table, output token
        self.acts = {}
        for o in self.ops:
            for n in list(o.ins) + list(o.outs):
                if n not in self.acts and n not in ("ids", "logits"):
                    self.acts[n] = device.create_buffer(self.max_tokens * self.widths[n] * 4)
        self.ids_buf = device.create_buffer(self.max_tokens * 4)
        self.params = device.create_buffer(UNIFORM_BYTES, "uniform")
        self.logit_rows = 0
        self.logits = None
        self._groups = {}
        self._enc_plans = {}
        self._gen = 0                 # bumped when buffers change: cached plans are stale
        if model.causal and self.head:
            self._grow_logits(1)
        self.tok_buf = device.create_buffer(16)
        self.readback = device.create_buffer(16, "readback")
        self.rope_buf = None
        if any(o.kind == "rope" for o in self.ops):
            self._upload_rope()

    # ------------------------------------------------------------------ weights
    def _alloc(self, t: Tensor, splittable):
        if not splittable and t.nbytes > self.max_binding:
            raise GpuError(f"{t.name}: {t.nbytes} bytes exceed the device's binding limit "
                           f"{self.max_binding} and cannot be split")
        if len(t.shape) == 1 or t.nbytes <= self.max_binding:
            rows = t.shape[0]
            t.chunks.append([self.device.create_buffer(t.nbytes), 0, rows, 0, t.nbytes])
            return
        rows, rb = t.shape[0], t.nbytes // t.shape[0]
        per = self.max_binding // rb
        if t.dtype == "f16" and (per * rb) % 4:
            per -= 1
        if per < 1:
            raise GpuError(f"{t.name}: one row of {rb} bytes exceeds the binding limit")
        r0 = 0
        while r0 < rows:
            n = min(per, rows - r0)
            t.chunks.append([self.device.create_buffer(n * rb), r0, n, r0 * rb, n * rb])
            r0 += n

    def weight_layout(self):
        """[(tensor name, nbytes)] in upload order (the dtype's raw little-endian bytes)."""
        return [(n, t.nbytes) for n, t in self.tensors.items()]

    def write_weight(self, name, byte_offset, data, nbytes=None):
        """Write `data` (numpy / memoryview natively; a JS Uint8Array proxy in the
        browser, never turned into Python bytes) at `byte_offset` of tensor `name`.
        Offsets and lengths should be multiples of 4."""
        t = self.tensors[name]
        if nbytes is None:
            nbytes = _nbytes(data)
        end = byte_offset + nbytes
        if byte_offset < 0 or end > t.nbytes + 3:
            raise ValueError(f"{name}: bytes [{byte_offset}, {end}) outside its {t.nbytes}")
        for buf, _r0, _n, b0, nb in t.chunks:
            lo, hi = max(byte_offset, b0), min(end, b0 + nb + (3 if len(t.chunks) == 1 else 0))
            if lo >= hi:
                continue
            part = data if (lo == byte_offset and hi == end) else _slice(data, lo - byte_offset, hi - byte_offset)
            self.device.write(buf, lo - b0, part)

    def weight_buffer(self, name):
        t = self.tensors[name]
        if len(t.chunks) != 1:
            raise GpuError(f"{name} is split across {len(t.chunks)} buffers; use write_weight")
        return t.chunks[0][0]

    def _upload_rope(self):
        rope = next(o for o in self.ops if o.kind == "rope")
        hd, theta = rope.attrs["head_dim"], rope.attrs["theta"]
        half = hd // 2
        inv = [1.0 / (theta ** (i * 2 / hd)) for i in range(half)]
        tab = array("f")
        for pos in range(self.max_positions):
            for f in inv:
                a = pos * f
                tab.append(math.cos(a))
                tab.append(math.sin(a))
        self.rope_buf = self.device.create_buffer(len(tab) * 4)
        self.device.write(self.rope_buf, 0, tab)

    def _grow_logits(self, rows):
        if rows <= self.logit_rows:
            return
        self.logit_rows = rows
        self.logits = self.device.create_buffer(rows * self.model.vocab * 4)
        self._enc_plans.clear()
        self._groups.clear()
        self._gen += 1

    # ------------------------------------------------------------------ caches
    def new_cache(self, capacity=None, start=None, stop=None):
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        capacity = min(capacity or self.max_positions, self.max_positions)
        return GpuKVCache(self, start, stop, capacity)

    # ------------------------------------------------------------------ op compilation
    def _group(self, pipe, src, entries):
        key = (src, tuple((b, id(r[0]) if isinstance(r, tuple) else id(r),
                           r[1:] if isinstance(r, tuple) else ()) for b, r in sorted(entries.items())))
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = (self.device.bind_group(pipe, entries), entries)
        return g[0]

    def _d(self, src, entries, gx, gy=1, gz=1, head=False):
        """One dispatch: pipeline from source, bind group (binding 0 = params)."""
        pipe = self.device.pipeline(src)
        ent = dict(entries)
        ent[0] = (self.params, PARAMS_HEAD if head else 0, 32)
        return (pipe, self._group(pipe, src, ent), gx, gy, gz)

    def _act(self, name):
        return self.logits if name == "logits" else self.acts[name]

    def _compile(self, o, T, cache, head_params, last_row):
        """Dispatches of op `o` for a step of T tokens."""
        k, a, w = o.kind, o.attrs, o.weights
        T1 = 1 if head_params else T          # rows this op touches
        hp = head_params
        out = []
        if k == "embed":
            D = self.model.hidden
            tok = self.tensors[w["tokens"]]
            for buf, r0, rows, _b0, _nb in tok.chunks:
                src = kernels.render("embed", WDECL=wdecl(1, "w", tok.dtype, 1), D=D, R0=r0, R=rows)
                out.append(self._d(src, {1: buf, 2: self.ids_buf, 3: self.acts["x"]}, _ceil(T * D, 64)))
            for role, pos in (("positions", "true"), ("token_type", "false")):
                if w.get(role):
                    t = self.tensors[w[role]]
                    src = kernels.render("add_row", WDECL=wdecl(1, "w", t.dtype, 1), D=D, POS=pos)
                    out.append(self._d(src, {1: t.chunks[0][0], 3: self.acts["x"]}, _ceil(T * D, 64)))
        elif k in ("rms_norm", "layer_norm"):
            D = self.widths[o.ins[0]]
            wt = self.tensors[w["w"]]
            bt = self.tensors[w["b"]] if w.get("b") else None
            inplace = o.ins[0] == o.outs[0]
            wg = int(self.variants["norm_wg"])
            ent = {1: wt.chunks[0][0], 4: self._act(o.outs[0])}
            bdecl = "fn ldb(i: u32) -> f32 { return 0.0; }"
            if bt is not None:
                bdecl = wdecl(2, "b", bt.dtype, 1)
                ent[2] = bt.chunks[0][0]
            if inplace:
                xdecl = "fn ldx(i: u32) -> f32 { return y[i]; }"
            else:
                xdecl = ("@group(0) @binding(3) var<storage, read> xin: array<f32>;\n"
                         "fn ldx(i: u32) -> f32 { return xin[i]; }")
                ent[3] = self._act(o.ins[0])
            src = kernels.render("norm", WDECL=wdecl(1, "w", wt.dtype, 1), BDECL=bdecl, XDECL=xdecl,
                                 D=D, WG=wg, EPS=_f32lit(a["eps"]),
                                 LAYER="true" if k == "layer_norm" else "false",
                                 LASTROW="true" if last_row else "false")
            out.append(self._d(src, ent, 1 if last_row else T1, head=False))
        elif k == "linear":
            out += self._linear(o, T1, hp)
        elif k == "split":
            c0, sw = 0, self.widths[o.ins[0]]
            for name, s in zip(o.outs, a["sizes"]):
                src = kernels.render("copy_cols", W=s, SW=sw, C0=c0)
                out.append(self._d(src, {1: self.acts[o.ins[0]], 2: self.acts[name]}, _ceil(T1 * s, 64), head=hp))
                c0 += s
        elif k == "rope":
            H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
            src = kernels.render("rope", H=H, HKV=Hkv, HD=hd, HALF=hd // 2)
            out.append(self._d(src, {1: self.rope_buf, 2: self.acts[o.ins[0]], 3: self.acts[o.ins[1]]},
                               _ceil(T * (H + Hkv) * (hd // 2), 64)))
        elif k == "attention":
            H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
            q, kk, vv = (self.acts[n] for n in o.ins)
            if a["causal"]:
                i = a["layer"]
                kc, vc, cap = cache.k[i], cache.v[i], cache.capacity
                src = kernels.render("kv_write", HKV=Hkv, HD=hd, CAP=cap)
                out.append(self._d(src, {1: kk, 2: vv, 3: kc, 4: vc}, _ceil(T * Hkv * hd, 64)))
                kk, vv = kc, vc
            else:
                cap = 0
            common = dict(H=H, HKV=Hkv, HD=hd, CAP=cap, SCALE=_f32lit(a["scale"]),
                          CAUSAL="true" if a["causal"] else "false")
            if self.variants.get("attention", "row") == "wg":
                src = kernels.render("attention_wg", **common)
                gx = T * H
            else:
                src = kernels.render("attention", WG=32, **common)
                gx = _ceil(T * H, 32)
            out.append(self._d(src, {1: q, 2: kk, 3: vv, 4: self.acts[o.outs[0]]}, gx))
        elif k in ("silu_mul", "gelu", "gelu_tanh", "add"):
            W = self.widths[o.outs[0]]
            bufs = [self._act(n) for n in o.ins]
            y = self._act(o.outs[0])
            fn = {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}.get(k)
            if k == "silu_mul":
                decl = ["a", "b"]
                body = "y[i] = silu(a[i]) * b[i];"
            elif k == "add":
                decl = ["a", "b"]
                body = "y[i] = a[i] + b[i];"
            else:
                decl = ["a"]
                body = f"y[i] = {fn}(a[i]);"
            ent, lines = {}, []
            for j, (nm, name) in enumerate(zip(decl, o.ins)):
                if name == o.outs[0]:
                    body = body.replace(f"{nm}[i]", "y[i]")
                    continue
                lines.append(f"@group(0) @binding({j + 1}) var<storage, read> {nm}: array<f32>;")
                ent[j + 1] = bufs[j]
            lines.append("@group(0) @binding(3) var<storage, read_write> y: array<f32>;")
            ent[3] = y
            tmpl = "add" if k == "add" else "unary"
            src = kernels.render(tmpl, DECL="\n".join(lines), W=W, BODY=body)
            out.append(self._d(src, ent, _ceil(T1 * W, 64), head=hp))
        elif k == "mean_pool":
            D = self.widths[o.ins[0]]
            src = kernels.render("pool", D=D, NORM="false")
            out.append(self._d(src, {1: self.acts[o.ins[0]], 2: self.acts[o.outs[0]]}, 1))
        elif k == "l2_normalize":
            raise AssertionError("l2_normalize is fused into mean_pool")
        else:
            raise GpuError(f"op {k!r} has no WebGPU kernel")
        return out

    def _linear(self, o, T, hp):
        w = o.weights
        wt = self.tensors[w["w"]]
        bt = self.tensors[w["b"]] if w.get("b") else None
        x, y = self._act(o.ins[0]), self._act(o.outs[0])
        TB = 1 if T == 1 else 4
        bdecl = "fn ldb(i: u32) -> f32 { return 0.0; }"
        ent0 = {3: x}
        if bt is not None:
            bdecl = wdecl(2, "b", bt.dtype, 1)
            ent0[2] = bt.chunks[0][0]
        if o.attrs.get("transposed"):
            K, N = wt.shape
            if len(wt.chunks) != 1:
                raise GpuError(f"{wt.name}: transposed weights larger than one binding are not supported")
            src = kernels.render("linear_t", WDECL=wdecl(1, "w", wt.dtype, 1), BDECL=bdecl, N=N, K=K, TB=TB)
            return [self._d(src, {**ent0, 4: y, 1: wt.chunks[0][0]}, _ceil(N, 64), _ceil(T, TB), head=hp)]
        NF, K = wt.shape
        vec = 4 if K % 4 == 0 else 1
        # the lm head (vocab x hidden) may have its own measured variant (`linear_head`)
        variant = self.variants.get("linear_head") if o.outs[0] == "logits" else None
        ydecl = ("@group(0) @binding(4) var<storage, read_write> y: array<f32>;\n"
                 "fn store(t: u32, n: u32, v: f32) { y[t * YS + N0 + n] = v + ldb(N0 + n); }")
        out = []
        for buf, r0, rows, _b0, _nb in wt.chunks:
            wd = (wdecl(1, "w", wt.dtype, vec) + "\n" + _mulv(vec) +
                  "\nfn ldw_at(n: u32, k: u32) -> " + ("vec4f" if vec == 4 else "f32") +
                  " { return ldw(n * K + k); }")
            out.append(self._linear_dispatch(wd, bdecl, ydecl, vec, rows, K // vec, NF, r0, T, TB,
                                             {**ent0, 4: y, 1: buf}, hp, variant))
        return out

    def _linear_dispatch(self, wdecl_, bdecl, ydecl, vec, rows, KV, YS, N0, T, TB, ent, hp, variant=None):
        variant = variant or self.variants["linear"]
        if variant.startswith("sg") and "subgroups" not in self.device.features:
            variant = "wg"
        subs = dict(WDECL=wdecl_, BDECL=bdecl, YDECL=ydecl, VT="vec4f" if vec == 4 else "f32",
                    N=rows, KV=KV, YS=YS, N0=N0, TB=TB)
        if variant == "row":
            src = kernels.render("linear_row", **subs)
            gx = _ceil(rows, 64)
        elif variant == "wg":
            src = kernels.render("linear_wg", PART=64 * TB, **subs)
            gx = rows
        elif variant.startswith("sgr"):
            R = int(variant[3:] or 4)
            src = kernels.render("linear_sgr", ENABLE=self.device.subgroup_enable, R=R, RTB=R * TB, **subs)
            gx = _ceil(rows, 4 * R)    # 4 subgroups of R columns per workgroup on 32-wide subgroups
        else:
            src = kernels.render("linear_sg", ENABLE=self.device.subgroup_enable,
                                 UNROLL=4 if variant == "sg4" else 2, **subs)
            gx = _ceil(rows, 4)        # 4 columns per workgroup on 32-wide subgroups
        return self._d(src, ent, gx, _ceil(T, TB), head=hp)

    def _linear_multi(self, group, T, hp):
        """Several GEMVs over one input (q/k/v, gate/up) in one dispatch."""
        TB = 1 if T == 1 else 4
        K = self.tensors[group[0].weights["w"]].shape[1]
        vec = 4 if K % 4 == 0 else 1
        vt = "vec4f" if vec == 4 else "f32"
        ent = {3: self._act(group[0].ins[0])}
        decl, load, store, e = [_mulv(vec)], [], [], 0
        for i, o in enumerate(group):
            wt = self.tensors[o.weights["w"]]
            bt = self.tensors[o.weights["b"]] if o.weights.get("b") else None
            n = wt.shape[0]
            decl.append(wdecl(10 + i, f"w{i}", wt.dtype, vec))
            ent[10 + i] = wt.chunks[0][0]
            if bt is not None:
                decl.append(wdecl(20 + i, f"b{i}", bt.dtype, 1))
                ent[20 + i] = bt.chunks[0][0]
                bias = f" + ldb{i}(n - {e}u)"
            else:
                bias = ""
            decl.append(f"@group(0) @binding({30 + i}) var<storage, read_write> y{i}: array<f32>;")
            ent[30 + i] = self._act(o.outs[0])
            cond = f"if (n < {e + n}u) " if i < len(group) - 1 else ""
            load.append(f"{cond}{{ return ldw{i}((n - {e}u) * K + k); }}")
            store.append(f"{cond}{{ y{i}[t * {n}u + n - {e}u] = v{bias}; return; }}")
            e += n
        wd = "\n".join(decl) + f"\nfn ldw_at(n: u32, k: u32) -> {vt} {{\n  " + "\n  ".join(load) + "\n}"
        yd = "fn store(t: u32, n: u32, v: f32) {\n  " + "\n  ".join(store) + "\n}"
        return self._linear_dispatch(wd, "", yd, vec, e, K // vec, e, 0, T, TB, ent, hp)

    def _fusable(self, ops, i):
        """The run of linears from ops[i] that can share one dispatch (same input, one
        chunk each, at most 8 storage bindings), or None."""
        # fusing costs a branch per weight load: measured slower with `row` on lavapipe
        # (5.4 -> 4.9 tok/s), so by default only the reduction variants fuse
        if not self.variants.get("fuse", self.variants["linear"] != "row"):
            return None
        o = ops[i]
        if o.kind != "linear" or o.attrs.get("transposed"):
            return None
        grp = []
        for p in ops[i:]:
            if (p.kind != "linear" or p.attrs.get("transposed") or p.ins[0] != o.ins[0]
                    or p.outs[0] == o.ins[0] or len(self.tensors[p.weights["w"]].chunks) != 1
                    or self.tensors[p.weights["w"]].shape[1] != self.tensors[o.weights["w"]].shape[1]):
                break
            grp.append(p)
        while grp and 1 + sum(2 if p.weights.get("b") else 1 for p in grp) + len(grp) > 8:
            grp.pop()
        return grp if len(grp) > 1 else None

    def _plan(self, T, cache, start, stop, embed, head, all_logits, sample):
        """The recorded dispatch list of one step; built once per key, replayed."""
        key = (T, start, stop, embed, head, all_logits, sample, self._gen)
        plans = cache.plans if cache is not None else self._enc_plans
        rec = plans.get(key)
        if rec is not None:
            return rec
        m = self.model
        disp = []
        body = m.ops(start, stop, embed=embed, head=False)
        i = 0
        while i < len(body):
            grp = self._fusable(body, i)
            if grp:
                disp.append(self._linear_multi(grp, T, False))
                i += len(grp)
                continue
            disp += self._compile(body[i], T, cache, False, False)
            i += 1
        if head:
            hops = list(m.head)
            last = m.causal and not all_logits
            i = 0
            while i < len(hops):
                o = hops[i]
                if o.kind == "mean_pool" and i + 1 < len(hops) and hops[i + 1].kind == "l2_normalize":
                    D = self.widths[o.ins[0]]
                    src = kernels.render("pool", D=D, NORM="true")
                    disp.append(self._d(src, {1: self.acts[o.ins[0]], 2: self.acts[hops[i + 1].outs[0]]}, 1))
                    i += 2
                    continue
                disp += self._compile(o, T, cache, last, last and i == 0)
                i += 1
            if sample:
                src = kernels.render("sample", V=m.vocab)
                disp.append(self._d(src, {1: self.logits, 2: self.tok_buf}, 1, head=True))
        rec = (self.device.record(disp), len(disp))
        plans[key] = rec
        self.stats["plans_built"] += 1
        return rec

    # ------------------------------------------------------------------ steps
    def _params(self, T, pos0, sp=None, n=0):
        greedy, temp, top_k, top_p, seed = 1, 1.0, 0, 1.0, 0
        if sp is not None and not sp.greedy:
            greedy, temp, top_k, top_p, seed = 0, sp.temperature, sp.top_k, sp.top_p, sp.seed
        main = struct.pack("<6I2f", T, pos0, seed & 0xFFFFFFFF, n & 0xFFFFFFFF, top_k, greedy, temp, top_p)
        headp = struct.pack("<6I2f", 1, pos0 + T - 1, seed & 0xFFFFFFFF, n & 0xFFFFFFFF, top_k, greedy,
                            temp, top_p)
        return main + b"\0" * (PARAMS_HEAD - len(main)) + headp + b"\0" * (UNIFORM_BYTES - PARAMS_HEAD - len(headp))

    def _prepare(self, ids, x, cache, start, stop, head, all_logits, sample, sp=None, n=0):
        """Validate, write inputs + params, return (recording, T, pos0, head, writes)."""
        m = self.model
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        if start < self.start or stop > self.stop:
            raise ValueError(f"layers [{start}, {stop}) are not on this backend ([{self.start}, {self.stop}))")
        head = (stop == m.n_layers) if head is None else head
        if head and not self.head:
            raise ValueError("this backend was built without the head")
        if (ids is None) == (x is None):
            raise ValueError("give exactly one of ids or x")
        writes = []
        if ids is not None:
            if start != 0 or not self.embed:
                raise ValueError("token ids enter at layer 0; give x for a later start")
            ids = [int(i) for i in _tolist(ids)]
            T = len(ids)
            if any(i < 0 or i >= m.vocab for i in ids):
                raise ValueError(f"token id out of range 0..{m.vocab - 1}")
            writes.append((self.ids_buf, 0, array("I", ids)))
        else:
            data, T = _rows(x, m.hidden)
            writes.append((self.acts["x"], 0, data))
        if T == 0:
            raise ValueError("empty step")
        if T > self.max_tokens:
            raise ValueError(f"{T} tokens in one step > max_tokens {self.max_tokens}")
        pos0 = cache.length if (cache is not None and m.causal) else 0
        if m.causal:
            if cache is None:
                raise ValueError("decoder models need a KV cache")
            if pos0 + T > cache.capacity:
                raise ValueError(f"context overflow: {pos0} + {T} tokens > {cache.capacity}")
        elif T > m.max_context:
            raise ValueError(f"input of {T} tokens exceeds the context of {m.max_context}")
        if head and m.causal and all_logits:
            self._grow_logits(T)
        rec, nd = self._plan(T, cache, start, stop, ids is not None, head, all_logits, sample)
        writes.append((self.params, 0, self._params(T, pos0, sp, n)))
        self.stats["steps"] += 1
        self.stats["dispatches"] += nd
        self.stats["submits"] += 1
        return rec, T, pos0, head, writes

    def _submit_forward(self, ids, x, cache, start, stop, head, all_logits):
        """Encode and submit one forward step; (buffer, rows, width) of what it produced:
        the hidden state [T, D], logits [rows, V] or the pooled embedding [1, D]."""
        m = self.model
        rec, T, pos0, head, writes = self._prepare(ids, x, cache, start, stop, head, all_logits, False)
        self.device.submit(rec, writes)
        if m.causal and cache is not None:
            cache.length = pos0 + T
        self.stats["readbacks"] += 1
        if not head:
            return self.acts["x"], T, m.hidden
        if m.causal:
            return self.logits, (T if all_logits else 1), m.vocab
        emb = next(o for o in m.head if o.kind == "l2_normalize").outs[0]
        return self.acts[emb], 1, m.hidden

    def forward(self, ids=None, x=None, cache=None, start=None, stop=None, head=None, all_logits=False):
        """CPython convenience mirroring NumpyBackend.forward; returns numpy arrays."""
        import numpy as np

        buf, rows, w = self._submit_forward(ids, x, cache, start, stop, head, all_logits)
        return np.frombuffer(self.device.read(buf, 0, rows * w * 4), np.float32).reshape(rows, w).copy()

    async def forward_async(self, ids=None, x=None, cache=None, start=None, stop=None, head=None,
                            all_logits=False):
        """forward() for the browser: the same result, row-major in one flat array('f'),
        after awaiting the readback (activations, not weights: small)."""
        buf, rows, w = self._submit_forward(ids, x, cache, start, stop, head, all_logits)
        raw = await self.device.read_async(buf, 0, rows * w * 4)
        return array("f", bytes(raw))

    async def read_activation_async(self, name, rows):
        w = self.model.vocab if name == "logits" else self.widths[name]
        return array("f", bytes(await self.device.read_async(self._act(name), 0, rows * w * 4)))

    @property
    def gpu_bytes(self):
        n = sum(c[4] for t in self.tensors.values() for c in t.chunks)
        n += sum(self.max_tokens * self.widths[k] * 4 for k in self.acts)
        n += self.logit_rows * self.model.vocab * 4
        return n

    def destroy(self):
        """Free the GPU buffers now (the browser keeps them until GC otherwise)."""
        bufs = [c[0] for t in self.tensors.values() for c in t.chunks] + list(self.acts.values())
        bufs += [b for b in (self.logits, self.rope_buf, self.ids_buf, self.params, self.tok_buf,
                             self.readback) if b is not None]
        for b in bufs:
            try:
                b.destroy()
            except Exception:  # noqa: BLE001
                pass
        self.tensors, self.acts = {}, {}
        self._groups.clear()
        self._enc_plans.clear()

    def _step_submit(self, ids, x, cache, params, n, start, stop):
        from ..sampling import SamplingParams

        params = params or SamplingParams()
        if not self.model.causal:
            raise ValueError("step() needs a decoder model")
        # a prompt longer than the activation buffers is prefilled in chunks
        ids, x = self._prefill_chunks(ids, x, cache, start, stop)
        rec, T, pos0, _h, writes = self._prepare(ids, x, cache, start, stop, True, False, True, params, n)
        self.device.submit(rec, writes, copy=(self.tok_buf, 0, self.readback, 0, 4))
        cache.length = pos0 + T
        self.stats["readbacks"] += 1

    def _prefill_chunks(self, ids, x, cache, start, stop):
        """Run all but the last `max_tokens` rows (KV cache only); return the rest."""
        mt = self.max_tokens
        if ids is not None:
            ids = [int(i) for i in _tolist(ids)]
            while len(ids) > mt:
                rec, T, pos0, _h, writes = self._prepare(ids[:mt], None, cache, start, stop, False, False, False)
                self.device.submit(rec, writes)
                cache.length = pos0 + T
                ids = ids[mt:]
            return ids, None
        data, T = _rows(x, self.model.hidden)
        D = self.model.hidden
        while T > mt:
            head_rows = data.subarray(0, mt * D) if hasattr(data, "subarray") else data[:mt]
            if isinstance(data, array):
                head_rows = data[:mt * D]
            rec, t, pos0, _h, writes = self._prepare(None, head_rows, cache, start, stop, False, False, False)
            self.device.submit(rec, writes)
            cache.length = pos0 + t
            data = data.subarray(mt * D) if hasattr(data, "subarray") else (
                data[mt * D:] if isinstance(data, array) else data[mt:])
            T -= mt
        return None, data

    def step(self, ids=None, x=None, cache=None, params=None, n=0, start=None, stop=None):
        """Forward + head + GPU sampling; reads back one u32 (native binding)."""
        self._step_submit(ids, x, cache, params, n, start, stop)
        return struct.unpack("<I", self.device.read(self.readback, 0, 4))[0]

    async def step_async(self, ids=None, x=None, cache=None, params=None, n=0, start=None, stop=None):
        """The same, awaiting the readback (the browser binding's mapAsync)."""
        self._step_submit(ids, x, cache, params, n, start, stop)
        return struct.unpack("<I", bytes(await self.device.read_async(self.readback, 0, 4)))[0]

    # ------------------------------------------------------------------ test / bench hooks
    def poison(self, value=float("nan")):
        """Fill every activation buffer (and the logits) with `value`: a kernel that
        leaves part of its output unwritten then shows as NaN."""
        bufs = list(self.acts.items()) + ([("logits", self.logits)] if self.logits is not None else [])
        for name, buf in bufs:
            rows = self.logit_rows if name == "logits" else self.max_tokens
            width = self.model.vocab if name == "logits" else self.widths[name]
            self.device.write(buf, 0, array("f", [value]) * (rows * width))

    def read_activation(self, name, rows):
        import numpy as np
        w = self.model.vocab if name == "logits" else self.widths[name]
        raw = self.device.read(self._act(name), 0, rows * w * 4)
        return np.frombuffer(raw, np.float32).reshape(rows, w).copy()

    def sample_logits(self, logits, params, n=0):
        """Run only the GPU sampler on a given logits row (tests and benchmarks)."""
        self.device.write(self.logits, 0, array("f", [float(v) for v in logits]))
        src = kernels.render("sample", V=self.model.vocab)
        rec = self.device.record([self._d(src, {1: self.logits, 2: self.tok_buf}, 1, head=True)])
        self.device.submit(rec, [(self.params, 0, self._params(1, 0, params, n))],
                           copy=(self.tok_buf, 0, self.readback, 0, 4))
        return struct.unpack("<I", self.device.read(self.readback, 0, 4))[0]

    # ------------------------------------------------------------------ loading (CPython)
    @classmethod
    def load(cls, model_dir, dtype="f32", start=0, stop=None, embed=None, head=None, device=None,
             autotune=True, **kw):
        """Read config + safetensors and upload with queue.writeBuffer (native binding)."""
        from ..weightfile import load_model_dir, read_safetensors_header, weight_files

        model = load_model_dir(model_dir, dtype)
        files = weight_files(model_dir, dtype)
        headers = {}
        for f in set(files.values()):
            headers[f] = read_safetensors_header(f)
        shapes, dtypes = {}, {}
        for n, f in files.items():
            info = headers[f][0][n]
            shapes[n] = tuple(info["shape"])
            dtypes[n] = {"F32": "f32", "F16": "f16"}.get(info["dtype"])  # the float formats the kernels run
        if device is None:
            from .native import NativeDevice
            device = NativeDevice.create()
        ops = model.ops(start, stop, embed=embed, head=head)
        need = model.tensors(ops)
        bad = [n for n in need if dtypes[n] is None]
        if bad:
            raise GpuError(f"unsupported weight dtype for {bad[0]}")
        if autotune and "variants" not in kw:
            kw["variants"] = autotune_variants(device, model, shapes, dtypes)
        self = cls(device, model, start, stop, embed, head, dtype, shapes=shapes, dtypes=dtypes, **kw)
        for f in set(files[n] for n in need):
            header, data0 = headers[f]
            with open(f, "rb") as fh:
                for n in need:
                    if files[n] != f:
                        continue
                    b0, b1 = header[n]["data_offsets"]
                    fh.seek(data0 + b0)
                    self.write_weight(n, 0, fh.read(b1 - b0))
        return self


# ----------------------------------------------------------------------------- autotune

_TUNE_CACHE = {}


def _tune_path():
    return os.path.join(os.path.expanduser("~"), ".cache", "pyapp", "gpu-autotune.json")


def tune_key(device, K, N, dtype):
    i = device.info
    return f"{device.kind}|{i.get('vendor')}|{i.get('architecture')}|{i.get('device')}|{i.get('description')}|{K}x{N}|{dtype}"


def candidate_variants(device):
    # one row per invocation everywhere (CPU adapters: SwiftShader, lavapipe), or
    # workgroup/subgroup reductions everywhere (real GPUs); measured, not guessed
    par = {"norm_wg": 64, "attention": "wg"}
    out = [{"linear": "row", "norm_wg": 1, "attention": "row"}, {"linear": "wg", **par}]
    if "subgroups" in device.features:
        out.append({"linear": "sg", **par})
        out.append({"linear": "sg4", **par})
    return out


# every GEMV variant (bench); sgrR = R columns per subgroup (linear_sgr.wgsl)
LINEAR_VARIANTS = ("row", "wg", "sg", "sg4", "sgr2", "sgr4", "sgr8")


def head_candidates(device, base):
    """GEMV variants worth measuring on the lm head (vocab x hidden: many short rows),
    given the layer choice `base`.  Several columns per subgroup only pays where there
    are enough rows to fill the GPU with R-column groups; on CPU adapters (`row`) the
    layer choice stands."""
    if base == "row" or "subgroups" not in device.features:
        return []
    return ["sg", "sg4", "sgr2", "sgr4"]


async def _time_step(device, b, cache, pos0, reps, rounds):
    """Best seconds per one-token step of backend `b` (its plan replayed `reps` times per
    submit where the binding records plans), over `rounds` timed submits after a warm-up."""
    rec, _ = b._plan(1, cache, 0, 1, False, False, False, False)
    if isinstance(rec, list):
        rec, n = device.record(rec * reps), reps
    else:
        n = 1
    writes = [(b.params, 0, b._params(1, pos0))]
    best = 1e9
    for _ in range(rounds + 1):
        t0 = device.now()
        device.submit(rec, writes, copy=(b.acts["x"], 0, b.readback, 0, 4))
        await device.read_async(b.readback, 0, 4)
        best = min(best, (device.now() - t0) / n)
    return best


async def measure_linear(device, N, K, variants, dtype="f32", reps=8, rounds=3):
    """{variant: seconds per GEMV [N, K] at T = 1} measured on `device`."""
    from ..models import Model, op

    m = Model(arch="tune", config={}, hidden=K, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=K,
              vocab=1, max_context=8, causal=False, embed=[],
              layers=[[op("linear", "x", "y", {"w": "w", "b": None})]], head=[])
    res = {}
    for v in variants:
        b = GpuBackend(device, m, 0, 1, embed=False, head=False, dtype=dtype, shapes={"w": (N, K)},
                       max_tokens=1, max_positions=8, variants={"linear": v, "fuse": False},
                       widths={"y": N})
        res[v] = await _time_step(device, b, None, 0, reps, rounds)
        del b
    return res


def _head_shape(model, shapes, dtypes):
    hl = [o for o in model.head if o.kind == "linear" and not o.attrs.get("transposed")
          and o.outs[0] == "logits"]
    if not hl or hl[0].weights["w"] not in shapes:
        return None
    w = hl[0].weights["w"]
    N, K = shapes[w]
    return N, K, (dtypes or {}).get(w, "f32")


async def measure_variants(device, K, N, dtype="f32", reps=8, rounds=3):
    """{variant name: (seconds per layer-like step, variants)} measured on `device`:
    norm + GEMV [N, K] + GEMV [K, N] + causal attention over 64 cached keys."""
    from ..models import Model, op

    hd = 64 if K % 64 == 0 else K
    H = K // hd
    layer = [op("rms_norm", "x", "h", {"w": "nw"}, eps=1e-5),
             op("linear", "h", "g", {"w": "w", "b": None}),
             op("linear", "g", "x", {"w": "w2", "b": None}),
             op("attention", ("x", "x", "x"), "a", layer=0, n_heads=H, n_kv_heads=H, head_dim=hd,
                causal=True, scale=1.0)]
    m = Model(arch="tune", config={}, hidden=K, n_layers=1, n_heads=H, n_kv_heads=H, head_dim=hd,
              vocab=1, max_context=64, causal=True, embed=[], layers=[layer], head=[])
    shapes = {"nw": (K,), "w": (N, K), "w2": (K, N)}
    res = {}
    for v in candidate_variants(device):
        b = GpuBackend(device, m, 0, 1, embed=False, head=False, dtype=dtype, shapes=shapes,
                       max_tokens=1, max_positions=64, variants=v)
        best = await _time_step(device, b, b.new_cache(64), 63, reps, rounds)
        res[f"{v['linear']}/{v['norm_wg']}/{v['attention']}"] = (best, v)
    return res


def autotune_variants(device, model, shapes, dtypes):
    """Pick kernel variants by a short measurement on the model's FFN shape; cached."""
    lin = [o for o in model.layers[0] if o.kind == "linear" and not o.attrs.get("transposed")]
    if not lin:
        return {"linear": "row", "norm_wg": 1}
    wname = max(lin, key=lambda o: shapes[o.weights["w"]][0]).weights["w"]
    N, K = shapes[wname]
    dt = dtypes.get(wname, "f32")
    key = tune_key(device, K, N, dt)
    if key in _TUNE_CACHE:
        return _TUNE_CACHE[key]
    path = _tune_path()
    disk = {}
    try:
        with open(path) as f:
            disk = json.load(f)
    except (OSError, ValueError):
        pass
    if key in disk:
        best = dict(disk[key]["variants"])
    else:
        res = _run_sync(measure_variants(device, K, N, dt))
        best = dict(min(res.values(), key=lambda r: r[0])[1])
        disk[key] = {"variants": best, "seconds": {k: r[0] for k, r in res.items()}}
    hs = _head_shape(model, shapes, dtypes)
    cands = head_candidates(device, best["linear"]) if hs else []
    if cands:
        hkey = tune_key(device, hs[1], hs[0], hs[2]) + "|head"
        if hkey not in disk:
            hres = _run_sync(measure_linear(device, hs[0], hs[1], cands, hs[2]))
            disk[hkey] = {"linear_head": min(hres, key=hres.get), "seconds": hres}
        best["linear_head"] = disk[hkey]["linear_head"]
    _TUNE_CACHE[key] = best
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(disk, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return best


async def autotune_async(device, model, shapes=None, dtypes=None):
    """Browser form: measure (awaiting readbacks), cache in memory, return variants."""
    shapes = shapes or infer_shapes(model)
    lin = [o for o in model.layers[0] if o.kind == "linear" and not o.attrs.get("transposed")]
    if not lin:
        return {"linear": "row", "norm_wg": 1}
    wname = max(lin, key=lambda o: shapes[o.weights["w"]][0]).weights["w"]
    N, K = shapes[wname]
    dt = (dtypes or {}).get(wname, "f32")
    key = tune_key(device, K, N, dt)
    if key not in _TUNE_CACHE:
        res = await measure_variants(device, K, N, dt)
        best = dict(min(res.values(), key=lambda r: r[0])[1])
        hs = _head_shape(model, shapes, dtypes)
        cands = head_candidates(device, best["linear"]) if hs else []
        if cands:
            hres = await measure_linear(device, hs[0], hs[1], cands, hs[2])
            best["linear_head"] = min(hres, key=hres.get)
        _TUNE_CACHE[key] = best
    return _TUNE_CACHE[key]


def _run_sync(coro):
    """Drive a coroutine that never really suspends (native binding)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise GpuError("coroutine suspended on the native binding")


# ----------------------------------------------------------------------------- data helpers

def _dtype_name(d):
    d = str(d).lower()
    out = {"f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16"}.get(d)
    if out is None:
        raise GpuError(f"weight dtype {d!r} is not supported (f32, f16)")
    return out


def _nbytes(data):
    nb = getattr(data, "byteLength", None)
    if nb is not None:
        return int(nb)
    return memoryview(data).nbytes


def _slice(data, a, b):
    if hasattr(data, "subarray"):           # JS typed array proxy
        return data.subarray(a, b)
    if hasattr(data, "byteLength"):          # JS ArrayBuffer proxy
        return data.slice(a, b)
    return memoryview(data).cast("B")[a:b]


def _tolist(ids):
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    out = []
    for i in ids:
        if isinstance(i, (list, tuple)):
            out += list(i)
        else:
            out.append(i)
    return out


def _rows(x, D):
    """(buffer-protocol f32 data, T) for a hidden state [T, D]."""
    if hasattr(x, "astype"):                 # numpy
        import numpy as np
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, D)
        return a, a.shape[0]
    if hasattr(x, "byteLength"):             # JS Float32Array proxy
        return x, int(x.length) // D
    if isinstance(x, array):
        return x, len(x) // D
    a = array("f")
    for r in x:
        if isinstance(r, (list, tuple)):
            a.extend(r)
        else:
            a.append(r)
    return a, len(a) // D
