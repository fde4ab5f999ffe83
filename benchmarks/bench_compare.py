"""Side-by-side decode benchmark on one GPU: pyapp's native binding (wgpu-native), pyapp's
browser binding (Pyodide in Deno over Deno's navigator.gpu), a PyTorch eager loop and HF
`generate`: same shapes, same random weights, greedy, one token id read back per step.

    PYTHONPATH=$PWD python3 benchmarks/bench_compare.py [--shapes smollm2-135m-f32,...]
        [--prompt-tokens 32] [--new-tokens 64] [--deno PATH] [--no-deno] [--profile] [--out DIR]

Prints one table (tok/s, pyapp / eager, dispatches per token, fraction of the bandwidth
limit: weight bytes per token over the PyTorch device-to-device copy measured in this run;
the WebGPU ceiling: that limit with the token's dispatch floor added, `dispatch_floor_us`)
and writes bench-results/compare-<time>.json. PyTorch rows are skipped where torch + CUDA
are absent (lavapipe: pyapp rows only); the Deno row where no deno binary is found.

Weights: `pool_weights` (a 1,048,573-value pool of a hash, rolled per tensor name, scaled by
1/sqrt(fan-in), tiled); benchmarks/deno/run_decode.mjs makes the same bytes in JS, so the
browser binding's greedy ids can be compared with the native binding's.
`--profile` adds per-kernel-class GPU time of one decode token (timestamp queries, one
compute pass per class) to the native rows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp.bench import SMOLLM2_CONFIG, floor_dispatches, gpu_pass_us, host_encode_ms, llama_names  # noqa: E402

LLAMA_1B = {  # Llama 3.2 1B's shape (no rope scaling: the speed is the same)
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
}
LLAMA_7B = {  # Llama 2 7B's shape
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
GEMMA3_270M = {  # Gemma 3 270M's shape (the store's config of the GGUF): 5 local : 1 global layers
    "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256, "sliding_window": 512,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "attention_bias": False, "tie_word_embeddings": True,
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
}
SHAPES = {
    "smollm2-135m-f32": (SMOLLM2_CONFIG, "f32"),
    "smollm2-135m-f16": (SMOLLM2_CONFIG, "f16"),
    "llama-1b-f16": (LLAMA_1B, "f16"),
    "llama-7b-f16": (LLAMA_7B, "f16"),
    # 4-bit rows (issue 13): pyapp only; PyTorch has no Q4_1 GEMV, its f16 rows are the comparison
    "smollm2-135m-q4_1": (SMOLLM2_CONFIG, "q4_1"),
    "llama-7b-q4_1": (LLAMA_7B, "q4_1"),
    # Gemma 3 270M (issue 18): the 262,144 x 640 tied head is most of a token's weight bytes
    "gemma3-270m-f32": (GEMMA3_270M, "f32"),
    "gemma3-270m-f16": (GEMMA3_270M, "f16"),
    "gemma3-270m-q4_1": (GEMMA3_270M, "q4_1"),
}
BLOCK_FORMATS = ("q4_1",)
POOL = 1048573   # prime; the same constant as run_decode.mjs


def tensor_names(cfg):
    """Every tensor of the config's architecture: Llama's list by hand, any other architecture
    from its own `build` (pyapp.synth, the random-weight model of a config)."""
    if cfg["model_type"] != "llama":
        from pyapp.synth import synth_model
        m = synth_model(cfg)
        return m.tensors(m.ops())
    return llama_names(cfg) + ([] if cfg["tie_word_embeddings"] else ["lm_head.weight"])


# ----------------------------------------------------------------------------- weights

def _lowbias32(x):
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


_POOL = {}


def _pool():
    if "p" not in _POOL:
        u = _lowbias32(np.arange(POOL, dtype=np.uint32)) / 4294967296.0
        _POOL["p"] = ((u * 2 - 1) * math.sqrt(3)).astype(np.float32)
    return _POOL["p"]


def name_offset(name):
    h = 0x811C9DC5
    for c in name.encode():
        h = ((h ^ c) * 0x01000193) & 0xFFFFFFFF
    return h % POOL


def pool_weights(name, shape, dtype):
    """out[i] = cast(scale * pool[(i + off(name)) % POOL]); 1 + 0.05 * pool for 1-D tensors."""
    vec = len(shape) == 1
    scale = np.float32(0.05 if vec else 1 / math.sqrt(shape[-1]))
    key = (vec, float(scale), dtype)
    per = _POOL.get(key)
    if per is None:
        p = _pool()
        per = (np.float32(1) + scale * p) if vec else scale * p
        per = _POOL[key] = per.astype(np.float16 if dtype == "f16" else np.float32)
    return np.resize(np.roll(per, -name_offset(name)), math.prod(shape)).reshape(shape)


def tensor_format(shape, dtype):
    """A block format holds the matrices; norms (1-D) stay f32, as in a GGUF."""
    return "f32" if dtype in BLOCK_FORMATS and len(shape) == 1 else dtype


def q4_1_blocks(name, shape):
    """Random Q4_1 rows [N, K/32*20]: d = sqrt(3)/sqrt(K)/8, m = -8d, random nibbles, so values
    are uniform on about ±sqrt(3)/sqrt(K) like the float rows (speed runs: no reference ids)."""
    N, K = shape
    nb = N * K // 32
    d = np.float16(math.sqrt(3) / math.sqrt(K) / 8)
    head = np.frombuffer(np.array([d, np.float16(-8 * float(d))], np.float16).tobytes(), np.uint8)
    words = _lowbias32(np.arange(name_offset(name), name_offset(name) + nb * 4, dtype=np.uint64)
                       .astype(np.uint32))
    blocks = np.empty((nb, 20), np.uint8)
    blocks[:, :4] = head
    blocks[:, 4:] = words.view(np.uint8).reshape(nb, 16)
    return blocks.reshape(N, K // 32 * 20)


def weights_for(name, shape, dtype):
    fmt = tensor_format(shape, dtype)
    return q4_1_blocks(name, shape) if fmt == "q4_1" else pool_weights(name, shape, fmt)


def weight_bytes_per_token(cfg, dtype):
    """Bytes of weights one decode token must read: every matrix and norm once, one
    embedding row, and the table again when it doubles as the lm head (block formats: the
    matrices in their blocks, norms in f32)."""
    from pyapp import formats
    from pyapp.arch import build_model
    from pyapp.gpu.shapes import infer_shapes
    shapes = infer_shapes(build_model(cfg, tensor_names(cfg)))
    emb = next(o.weights["tokens"] for o in build_model(cfg, tensor_names(cfg)).ops() if o.kind == "embed")
    total = 0
    for name, shape in shapes.items():
        f = formats.get(tensor_format(shape, dtype))
        per = f.block_bytes / f.block          # bytes per value
        if name == emb:
            total += per * shape[1] + (per * math.prod(shape) if cfg["tie_word_embeddings"] else 0)
        else:
            total += per * math.prod(shape)
    return int(total)


# ----------------------------------------------------------------------------- pyapp, native

def _capture_kernel_names():
    """Wrap kernels.render so that every rendered source maps to its template name
    ({source: name}); returns that dict and the original render to restore."""
    from pyapp import kernels
    names = {}
    orig = kernels.render

    def render(name, prelude="", **subs):
        src = orig(name, prelude, **subs)
        names[src] = name
        return src
    kernels.render = render
    return names, orig


def autotuned(dev, cfg, dtype):
    from pyapp.arch import build_model
    from pyapp.gpu.autotune import autotune_variants
    from pyapp.gpu.shapes import infer_shapes
    model = build_model(cfg, tensor_names(cfg))
    shapes = infer_shapes(model)
    return autotune_variants(dev, model, shapes, {n: tensor_format(s, dtype) for n, s in shapes.items()})


def random_backend(dev, cfg, dtype, variants=None, write=True):
    """The whole model of `cfg` on `dev` (autotuned variants unless given), the pool's random
    weights written (`write`: encoding alone does not read them)."""
    from pyapp.arch import build_model
    from pyapp.gpu import GpuBackend
    from pyapp.gpu.autotune import autotune_variants
    from pyapp.gpu.shapes import infer_shapes
    model = build_model(cfg, tensor_names(cfg))
    shapes = infer_shapes(model)
    dtypes = {n: tensor_format(s, dtype) for n, s in shapes.items()}
    v = dict(variants or autotune_variants(dev, model, shapes, dtypes))
    be = GpuBackend(dev, model, 0, None, None, None, dtype, shapes=shapes, dtypes=dtypes, variants=v)
    if write:
        for name, _nb in be.weight_layout():
            be.write_weight(name, 0, weights_for(name, shapes[name], dtype))
    return be


def run_native(dev, cfg, dtype, P, N, variants=None, profile=False):
    from pyapp import kernels
    from pyapp.sampling import SamplingParams

    src_names, orig = _capture_kernel_names()
    try:
        t = time.perf_counter()
        be = random_backend(dev, cfg, dtype, variants)
        model = be.model
        dev.read(be.tok_buf, 0, 4)          # waits for the uploads
        load_s = time.perf_counter() - t
        sp = SamplingParams()
        prompt = [1 + (i * 7919) % (model.vocab - 1) for i in range(P)]

        def run(n_new):
            c = be.new_cache(P + N + 8)
            t = time.perf_counter()
            tok = be.step(ids=prompt, cache=c, params=sp)
            prefill = time.perf_counter() - t
            d0, toks = be.stats["dispatches"], [tok]
            t = time.perf_counter()
            for n in range(1, n_new + 1):
                tok = be.step(ids=[tok], cache=c, params=sp, n=n)
                toks.append(tok)
            return prefill, time.perf_counter() - t, be.stats["dispatches"] - d0, toks, c
        run(2)
        prefill, dec, nd, toks, cache = run(N)

        def pipelined(depth):
            # timed from token 0's read to token N's (GenerationResult.decode_seconds): subtracting
            # the step loop's prefill instead let one run's slow prefill inflate the rate (run 14f
            # printed 331.7 tok/s, above the bandwidth limit)
            c = be.new_cache(P + N + 8)
            res = be.decode(prompt, c, sp, N + 1, depth=depth)
            return res.decode_seconds, res.ids
        from pyapp.gpu.backend import DECODE_DEPTH
        pipelined(DECODE_DEPTH)
        pdec, ptoks = pipelined(DECODE_DEPTH)
        rec, _ = be._plan(1, cache, 0, model.n_layers, True, True, False, True)
        res = {"binding": "native (wgpu-py)", "variants": be.variants, "load_seconds": load_s,
               "prefill_seconds": prefill, "decode_seconds": dec, "decode_tokens_per_s": N / dec,
               "ms_per_token": dec / N * 1e3, "dispatches_per_token": nd / N, "tokens": toks,
               "host_encode_ms_per_token": host_encode_ms(dev, rec),
               "pipelined_decode_tokens_per_s": N / pdec, "pipelined_depth": DECODE_DEPTH,
               "pipelined_first_token_diff": first_diff(ptoks, toks)}
        res["floor_us_per_token"] = dispatch_floor_us(dev, rec)
        if profile:
            pipe_src = {id(p): s for s, p in dev._pipelines.items()}
            res["profile"] = profile_classes(dev, be, rec, {k: src_names.get(s, "?") for k, s in pipe_src.items()},
                                             cfg, dtype)
        be.destroy()
        return res
    finally:
        kernels.render = orig


def profile_classes(dev, be, rec, kind_of, cfg, dtype, reps=10):
    """GPU µs per decode token by kernel class: one compute pass per class (its dispatches
    from one token's plan, replayed `reps` times) between timestamp queries; and the whole
    plan in one pass the same way. Classes run out of order: the data is garbage, the work
    is the same."""
    if "timestamp-query" not in dev.features:
        return {"error": "no timestamp-query"}
    classes, shapes = {}, {}
    for d in rec:
        classes.setdefault(kind_of.get(id(d[0]), "?"), []).append(d)
    for d in rec:                  # the GEMVs again by pipeline (one per weight shape), in plan order
        name = kind_of.get(id(d[0]), "?")
        if name.startswith("linear"):
            shapes.setdefault(id(d[0]), (f"{name} #{len(shapes)} gx={d[2]}", []))[1].append(d)
    groups = [("(whole token)", list(rec))] + sorted(classes.items()) + list(shapes.values())
    groups += [("floor " + name, floor_dispatches(dev, ds)) for name, ds in groups]   # the same, no work
    times = gpu_pass_us(dev, [ds for _name, ds in groups], reps)
    out = []
    wb = weight_bytes_per_token(cfg, dtype)
    for i, (name, ds) in enumerate(groups):
        us = times[i]
        row = {"class": name, "dispatches": len(ds), "us_per_token": us, "us_per_dispatch": us / len(ds)}
        if name.startswith(("linear", "(whole")):
            row["weight_GBps_if_all_weights"] = wb / (us * 1e-6) / 1e9
        out.append(row)
    return out


def dispatch_floor_us(dev, rec, reps=20):
    """GPU µs of a token's dispatches with no work in them (`floor_dispatches` of the plan
    `rec`), in one pass, `reps` times per submit (encoded before the clock starts), best of 4
    submits: what WebGPU charges a token for its dispatch count alone. With the weight bytes at
    the copy bandwidth it bounds the token from below (the "ceiling")."""
    plan = dev.record(floor_dispatches(dev, rec) * reps)
    copies, best = [(dev.create_buffer(4), 0, dev.create_buffer(4, "readback"), 0, 4)], 1e9
    for _ in range(4):
        cb = dev.command_buffer(plan, copies=copies)
        t = time.perf_counter()
        dev.submit_buffer(cb, copies)
        dev.read(copies[0][2], 0, 4)
        best = min(best, time.perf_counter() - t)
    return best / reps * 1e6


def gemv_variants(dev, cfg, dtype, only=None, extra=None):
    """GB/s of weight traffic of each GEMV shape of the model at T = 1, every reduction variant
    (measure_linear: 32 GEMVs per submit, best of 3, the submit + 4-byte readback included);
    where the adapter has shader-f16 and the format an f16 loader, each with both storage kinds
    ("<variant>" u32 loaders, "<variant>/f16" typed f16 loads). `extra`: more variant keys for
    every GEMV (e.g. {"sgq_groups": 264}). An `sgq` variant on an adapter without
    packed_4x8_integer_dot_product runs (and is timed as) its sgb form."""
    from pyapp.gpu import wgsl
    from pyapp.gpu.autotune import LINEAR_VARIANTS, _run_sync, measure_linear, storage_choices
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or D // cfg["num_attention_heads"]
    shapes = {(cfg["num_attention_heads"] * hd, D), (cfg["num_key_value_heads"] * hd, D), (I, D), (D, I), (V, D)}
    from pyapp import formats
    item = formats.get(dtype).block_bytes / formats.get(dtype).block    # bytes per weight value
    vs = [v for v in LINEAR_VARIANTS if v != "row" and (v == "wg" or "subgroups" in dev.features)
          and (not v.startswith(("sgb", "sgq")) or wgsl.has_q(dtype)) and (not v.startswith("sgw") or wgsl.has_v8(dtype))
          and (only is None or v in only)]
    stores = storage_choices(dev, dtype) or ["u32"]
    out = []
    for N, K in sorted(shapes):
        row = {"N": N, "K": K, "dtype": dtype}
        for st in stores:
            for v in vs:
                name = v if st == "u32" else f"{v}/{st}"
                try:
                    t = _run_sync(measure_linear(dev, N, K, [v], dtype, reps=32,
                                                 extra={"storage": st, **(extra or {})}))[v]
                    row[name] = {"us": t * 1e6, "GBps": N * K * item / t / 1e9}
                except Exception as e:  # noqa: BLE001  (e.g. wg: one workgroup per row > 65535 rows)
                    row[name] = {"error": str(e).splitlines()[-1][:200], "GBps": 0.0}
        out.append(row)
    return out


# ----------------------------------------------------------------------------- pyapp in Deno

def find_deno(arg):
    for c in (arg, os.environ.get("DENO"), ROOT / "node_modules/@deno/linux-x64-glibc/deno", shutil.which("deno")):
        if c and Path(c).is_file():
            return str(c)
    return None


def run_deno(deno, cfg, dtype, P, N, variants, pyodide_dir, depth=None):
    spec = {"pyodide": str(pyodide_dir), "pyapp": str(ROOT), "config": cfg, "names": tensor_names(cfg),
            "dtype": dtype, "prompt_tokens": P, "new_tokens": N, "variants": variants, "depth": depth}
    with tempfile.TemporaryDirectory() as d:
        sp, op = Path(d) / "spec.json", Path(d) / "out.json"
        sp.write_text(json.dumps(spec))
        env = {**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")}
        r = subprocess.run([deno, "run", "--unstable-webgpu", "-A", str(ROOT / "benchmarks/deno/run_decode.mjs"),
                            str(sp), str(op)], capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0 or not op.exists():
            return {"error": (r.stderr or r.stdout)[-2000:]}
        return json.loads(op.read_text())


# ----------------------------------------------------------------------------- PyTorch

def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def torch_copy_GBps(torch, nbytes=1 << 30, reps=20):
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    for _ in range(5):
        s.record()
        for _ in range(reps):
            b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3 / reps)
    del a, b
    return 2 * nbytes / best / 1e9


def hf_model(torch, cfg, dtype):
    """transformers' model of the shape (LlamaForCausalLM, Gemma3ForCausalLM), holding the pool weights."""
    from transformers import AutoConfig, AutoModelForCausalLM
    tdt = torch.float16 if dtype == "f16" else torch.float32
    conf = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    old = torch.get_default_dtype()
    torch.set_default_dtype(tdt)
    try:
        with torch.device("cuda"):
            m = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(old)
    m.eval()
    with torch.no_grad():
        for name, p in m.named_parameters():     # a tied head is the embedding's parameter
            p.copy_(torch.from_numpy(pool_weights(name, tuple(p.shape), dtype)))
    return m


class EagerLlama:
    """The decode loop a PyTorch user writes by hand: preallocated KV cache, SDPA, greedy."""

    def __init__(self, torch, hf, cfg, cap):
        self.t = torch
        self.F = torch.nn.functional
        m = hf.model
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        self.H, self.Hkv = H, cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or D // H
        self.eps = cfg["rms_norm_eps"]
        self.emb, self.norm, self.head = m.embed_tokens.weight, m.norm.weight, hf.lm_head.weight
        self.layers = [(L.input_layernorm.weight, L.self_attn.q_proj.weight, L.self_attn.k_proj.weight,
                        L.self_attn.v_proj.weight, L.self_attn.o_proj.weight, L.post_attention_layernorm.weight,
                        L.mlp.gate_proj.weight, L.mlp.up_proj.weight, L.mlp.down_proj.weight) for L in m.layers]
        dt = self.emb.dtype
        self.k = torch.zeros(len(self.layers), self.Hkv, cap, self.hd, dtype=dt, device="cuda")
        self.v = torch.zeros_like(self.k)
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.hd, 2, device="cuda").float() / self.hd))
        ang = torch.arange(cap, device="cuda").float()[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        self.cos, self.sin = ang.cos().to(dt), ang.sin().to(dt)

    def rms(self, x, w):
        xf = x.float()
        return w * (xf * self.t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def rope(self, x, pos0):
        T, h = x.shape[1], self.hd // 2
        c, s = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        rot = self.t.cat([-x[..., h:], x[..., :h]], -1)
        return x * c + rot * s

    def step(self, ids, pos0):
        t, F = self.t, self.F
        T = ids.shape[0]
        x = self.emb[ids]
        for i, (wn1, wq, wk, wv, wo, wn2, wg, wu, wd) in enumerate(self.layers):
            h = self.rms(x, wn1)
            q = F.linear(h, wq).view(T, self.H, self.hd).transpose(0, 1)
            k = F.linear(h, wk).view(T, self.Hkv, self.hd).transpose(0, 1)
            v = F.linear(h, wv).view(T, self.Hkv, self.hd).transpose(0, 1)
            q, k = self.rope(q, pos0), self.rope(k, pos0)
            self.k[i, :, pos0:pos0 + T] = k
            self.v[i, :, pos0:pos0 + T] = v
            a = F.scaled_dot_product_attention(q[None], self.k[i:i + 1, :, :pos0 + T], self.v[i:i + 1, :, :pos0 + T],
                                               is_causal=T > 1, enable_gqa=self.H != self.Hkv)
            x = x + F.linear(a[0].transpose(0, 1).reshape(T, -1), wo)
            h = self.rms(x, wn2)
            x = x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)
        return F.linear(self.rms(x[-1:], self.norm), self.head).argmax(-1)


class EagerGemma3(EagerLlama):
    """The same hand-written loop for Gemma 3 (transformers' Gemma3ForCausalLM semantics):
    embeddings times sqrt(hidden), RMSNorms scaling by 1 + w, q/k norms, pre/post norms around
    attention and the MLP, GeGLU (tanh GELU), attention scaled by query_pre_attn_scalar**-0.5
    over the last `sliding_window` keys on local layers, RoPE base per layer type, tied head."""

    def __init__(self, torch, hf, cfg, cap):
        self.t, self.F = torch, torch.nn.functional
        m = hf.model
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        self.H, self.Hkv, self.hd, self.eps = H, cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
        self.scale = cfg["query_pre_attn_scalar"] ** -0.5
        self.emb, self.norm, self.head = m.embed_tokens.weight, m.norm.weight, hf.lm_head.weight
        dt, dev = self.emb.dtype, self.emb.device
        self.emb_scale = torch.tensor(D ** 0.5, dtype=dt, device=dev)
        types = cfg["layer_types"]
        self.windows = [cfg["sliding_window"] if t == "sliding_attention" else None for t in types]
        self.layers = [(L.input_layernorm.weight, L.self_attn.q_proj.weight, L.self_attn.k_proj.weight,
                        L.self_attn.v_proj.weight, L.self_attn.q_norm.weight, L.self_attn.k_norm.weight,
                        L.self_attn.o_proj.weight, L.post_attention_layernorm.weight,
                        L.pre_feedforward_layernorm.weight, L.mlp.gate_proj.weight, L.mlp.up_proj.weight,
                        L.mlp.down_proj.weight, L.post_feedforward_layernorm.weight) for L in m.layers]
        self.k = torch.zeros(len(self.layers), self.Hkv, cap, self.hd, dtype=dt, device=dev)
        self.v = torch.zeros_like(self.k)
        self.rot = {}
        for theta in {cfg["rope_theta"], cfg["rope_local_base_freq"]}:
            inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2, device=dev).float() / self.hd))
            ang = torch.arange(cap, device=dev).float()[:, None] * inv[None]
            ang = torch.cat([ang, ang], -1)
            self.rot[theta] = (ang.cos().to(dt), ang.sin().to(dt))
        self.thetas = [cfg["rope_local_base_freq"] if w else cfg["rope_theta"] for w in self.windows]

    def rms(self, x, w):
        xf = x.float()
        return ((xf * self.t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)) * (1.0 + w.float())).to(x.dtype)

    def rope_t(self, x, pos0, theta):
        self.cos, self.sin = self.rot[theta]
        return self.rope(x, pos0)

    def step(self, ids, pos0):
        t, F = self.t, self.F
        T, dev = ids.shape[0], ids.device
        x = self.emb[ids] * self.emb_scale
        for i, (wn1, wq, wk, wv, wqn, wkn, wo, wn2, wn3, wg, wu, wd, wn4) in enumerate(self.layers):
            h = self.rms(x, wn1)
            q = self.rms(F.linear(h, wq).view(T, self.H, self.hd), wqn).transpose(0, 1)
            k = self.rms(F.linear(h, wk).view(T, self.Hkv, self.hd), wkn).transpose(0, 1)
            v = F.linear(h, wv).view(T, self.Hkv, self.hd).transpose(0, 1)
            q, k = self.rope_t(q, pos0, self.thetas[i]), self.rope_t(k, pos0, self.thetas[i])
            self.k[i, :, pos0:pos0 + T] = k
            self.v[i, :, pos0:pos0 + T] = v
            W, end = self.windows[i], pos0 + T
            lo = max(0, pos0 - W + 1) if W else 0        # the oldest key any of these queries sees
            mask = None
            if T > 1:
                qp = t.arange(pos0, end, device=dev)[:, None]
                kp = t.arange(lo, end, device=dev)[None]
                mask = (kp <= qp) & ((qp - kp < W) if W else True)
            a = F.scaled_dot_product_attention(q[None], self.k[i:i + 1, :, lo:end], self.v[i:i + 1, :, lo:end],
                                               attn_mask=mask, scale=self.scale, enable_gqa=self.H != self.Hkv)
            x = x + self.rms(F.linear(a[0].transpose(0, 1).reshape(T, -1), wo), wn2)
            h = self.rms(x, wn3)
            x = x + self.rms(F.linear(F.gelu(F.linear(h, wg), approximate="tanh") * F.linear(h, wu), wd), wn4)
        return F.linear(self.rms(x[-1:], self.norm), self.head).argmax(-1)


EAGER = {"llama": EagerLlama, "gemma3_text": EagerGemma3}


def run_torch(torch, cfg, dtype, P, N):
    hf = hf_model(torch, cfg, dtype)
    prompt = [1 + (i * 7919) % (cfg["vocab_size"] - 1) for i in range(P)]
    out = {}
    with torch.inference_mode():
        eager = EAGER[cfg["model_type"]](torch, hf, cfg, P + N + 8)

        def loop(n_new):
            ids = torch.tensor(prompt, device="cuda")
            tok = int(eager.step(ids, 0).item())
            toks = [tok]
            t = time.perf_counter()
            for n in range(1, n_new + 1):
                tok = int(eager.step(torch.tensor([tok], device="cuda"), P + n - 1).item())
                toks.append(tok)
            return time.perf_counter() - t, toks
        loop(2)
        dec, toks = loop(N)
        out["eager"] = {"decode_seconds": dec, "decode_tokens_per_s": N / dec, "tokens": toks}
        del eager
        ids = torch.tensor([prompt], device="cuda")
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)

        def gen(n_new):
            torch.cuda.synchronize()
            t = time.perf_counter()
            o = hf.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
            torch.cuda.synchronize()
            return time.perf_counter() - t, o[0, P:].tolist()
        gen(2)
        t1, _ = gen(1)
        tn, toks = gen(N + 1)
        # decode only: N steps after the first token (generate(N+1) - generate(1))
        out["hf_generate"] = {"decode_seconds": tn - t1, "decode_tokens_per_s": N / (tn - t1), "tokens": toks,
                              "transformers": __import__("transformers").__version__}
    del hf
    torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- main

def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def table(rows):
    cols = ["shape", "pyapp native", "native pipelined", "pyapp Deno (browser binding)", "Deno pipelined",
            "PyTorch eager", "HF generate", "native / eager", "Deno / native", "dispatches/token", "limit tok/s", "native % of limit",
            "host encode % of token", "dispatch floor µs/token", "WebGPU ceiling tok/s", "native % of ceiling"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def f(v, d=1):
        return "—" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    for r in rows:
        nat = r.get("native", {}).get("decode_tokens_per_s")
        den = r.get("deno", {}).get("decode_tokens_per_s")
        eag = r.get("eager", {}).get("decode_tokens_per_s")
        hf = r.get("hf_generate", {}).get("decode_tokens_per_s")
        lim = r.get("limit_tokens_per_s")
        enc = r.get("native", {}).get("host_encode_ms_per_token")
        ms = r.get("native", {}).get("ms_per_token")
        natp = r.get("native", {}).get("pipelined_decode_tokens_per_s")
        denp = r.get("deno", {}).get("pipelined_decode_tokens_per_s")
        nat, den = max(nat or 0, natp or 0) or None, max(den or 0, denp or 0) or None
        floor, ceil = r.get("native", {}).get("floor_us_per_token"), r.get("ceiling_tokens_per_s")
        lines.append("| " + " | ".join([
            r["shape"], f(r.get("native", {}).get("decode_tokens_per_s")), f(natp),
            f(r.get("deno", {}).get("decode_tokens_per_s")), f(denp), f(eag), f(hf),
            f(nat / eag if nat and eag else None, 2) + ("×" if nat and eag else ""),
            f(den / nat if den and nat else None, 2) + ("×" if den and nat else ""),
            f(r.get("native", {}).get("dispatches_per_token"), 0), f(lim, 0),
            f(100 * nat / lim if nat and lim else None, 0) + ("%" if nat and lim else ""),
            f(100 * enc / ms if enc and ms else None, 0) + ("%" if enc and ms else ""),
            f(floor, 0), f(ceil, 0), f(100 * nat / ceil if nat and ceil else None, 0) + ("%" if nat and ceil else ""),
        ]) + " |")
    return "\n".join(lines)


class _Skip(Exception):
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=None, help="comma list of " + ", ".join(SHAPES)
                    + " (default: all with CUDA, smollm2-135m-f32 without)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--deno", help="deno binary (default: $DENO, node_modules/@deno/linux-x64-glibc/deno, PATH)")
    ap.add_argument("--no-deno", action="store_true")
    ap.add_argument("--deno-shapes", default=None, help="shapes for the Deno row (default: all chosen)")
    ap.add_argument("--pyodide", default=str(ROOT / "node_modules/pyodide"))
    ap.add_argument("--deno-depth", type=int, default=None,
                    help="steps in flight in the Deno row's pipelined decode (default: the edge's PIPELINE_DEPTH)")
    ap.add_argument("--profile", action="store_true", help="per-kernel-class GPU time (timestamp queries)")
    ap.add_argument("--gemv", action="store_true", help="GB/s of each GEMV shape, every variant")
    ap.add_argument("--gemv-variants", help="with --gemv: only these variants (comma list)")
    ap.add_argument("--linear", help="force the GEMV variant (default: autotuned)")
    ap.add_argument("--variants", help="JSON merged into the variants of the native rows (and of --gemv's GEMVs), e.g. "
                    '\'{"fold": false, "off": ["fuse_rope_attention", "fuse_add_norm"]}\' (the plan before the rules)')
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-decode", action="store_true", help="no decode rows (with --gemv: GEMVs alone)")
    ap.add_argument("--label", default="", help="a name for this run in the JSON")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)

    from pyapp.gpu.native import NativeDevice
    torch = None if a.no_torch else torch_cuda()
    shapes = (a.shapes or (",".join(SHAPES) if torch else "smollm2-135m-f32")).split(",")
    deno = None if a.no_deno else find_deno(a.deno)
    deno_shapes = set((a.deno_shapes or ",".join(shapes)).split(","))
    dev = NativeDevice.create()
    P, N = a.prompt_tokens, a.new_tokens
    res = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "adapter": dev.info,
           "features": sorted(dev.features), "prompt_tokens": P, "new_tokens": N, "torch": None,
           "deno": deno, "label": a.label, "extra_variants": a.variants, "rows": []}
    if torch:
        res["torch"] = {"version": torch.__version__, "gpu": torch.cuda.get_device_name()}
        res["copy_GBps"] = torch_copy_GBps(torch)
        print(f"PyTorch D2D copy: {res['copy_GBps']:.0f} GB/s (read + write)", flush=True)
    for s in shapes:
        cfg, dtype = SHAPES[s]
        row = {"shape": s, "weight_bytes_per_token": weight_bytes_per_token(cfg, dtype)}
        if res.get("copy_GBps"):
            row["limit_tokens_per_s"] = res["copy_GBps"] * 1e9 / row["weight_bytes_per_token"]
        variants = None
        if a.linear:
            variants = {"linear": a.linear, "norm_wg": 1 if a.linear == "row" else 64,
                        "attention": "row" if a.linear == "row" else "wg"}
        if a.variants:
            variants = {**(variants or autotuned(dev, cfg, dtype)), **json.loads(a.variants)}
        try:
            if a.no_decode:
                raise _Skip
            row["native"] = run_native(dev, cfg, dtype, P, N, variants, a.profile)
            if row.get("limit_tokens_per_s"):
                # a token can take no less than its bytes at the copy bandwidth plus its dispatches' floor
                row["ceiling_tokens_per_s"] = 1 / (1 / row["limit_tokens_per_s"]
                                                   + row["native"]["floor_us_per_token"] * 1e-6)
            print(f"{s}: native {row['native']['decode_tokens_per_s']:.1f} tok/s "
                  f"(pipelined {row['native']['pipelined_decode_tokens_per_s']:.1f}), "
                  f"{row['native']['dispatches_per_token']:.0f} dispatches/token, "
                  f"floor {row['native']['floor_us_per_token']:.0f} µs/token", flush=True)
        except _Skip:
            row["native"] = {"skipped": "--no-decode"}
        except Exception as e:  # noqa: BLE001
            row["native"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"{s}: native failed: {row['native']['error']}", flush=True)
        if a.gemv:
            row["gemv"] = gemv_variants(dev, cfg, dtype, a.gemv_variants.split(",") if a.gemv_variants else None,
                                        {k: v for k, v in json.loads(a.variants or "{}").items() if k != "linear"})
            for g in row["gemv"]:
                print(f"  gemv {g['N']}x{g['K']} {dtype}: " + "  ".join(
                    f"{v} {g[v]['GBps']:.0f}" for v in g if isinstance(g[v], dict)) + " GB/s", flush=True)
        if deno and s in deno_shapes and dtype not in BLOCK_FORMATS and not a.no_decode:
            row["deno"] = run_deno(deno, cfg, dtype, P, N, row["native"].get("variants"), a.pyodide, a.deno_depth)
            if "tokens" in row["deno"] and "tokens" in row["native"]:
                row["deno"]["first_token_diff_vs_native"] = first_diff(row["deno"]["tokens"], row["native"]["tokens"])
            print(f"{s}: deno {row['deno'].get('decode_tokens_per_s', row['deno'].get('error'))} "
                  f"pipelined {row['deno'].get('pipelined_decode_tokens_per_s')}", flush=True)
        if torch and dtype not in BLOCK_FORMATS and not a.no_decode:
            try:
                row.update(run_torch(torch, cfg, dtype, P, N))
                if "tokens" in row["native"]:
                    row["eager"]["first_token_diff_vs_native"] = first_diff(row["eager"]["tokens"], row["native"]["tokens"])
                print(f"{s}: eager {row['eager']['decode_tokens_per_s']:.1f}, "
                      f"HF generate {row['hf_generate']['decode_tokens_per_s']:.1f} tok/s", flush=True)
            except Exception as e:  # noqa: BLE001
                row["torch_error"] = f"{type(e).__name__}: {e}"[:2000]
                print(f"{s}: torch failed: {row['torch_error']}", flush=True)
        res["rows"].append(row)
    out = Path(a.out) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    for row in res["rows"]:
        for p in row.get("native", {}).get("profile", []) or []:
            if isinstance(p, dict):
                print(f"  {row['shape']:18s} {p['class']:22s} {p['dispatches']:4d} disp "
                      f"{p['us_per_token']:9.1f} us/token {p['us_per_dispatch']:7.2f} us/disp "
                      + (f"{p['weight_GBps_if_all_weights']:7.0f} GB/s" if 'weight_GBps_if_all_weights' in p else ""))
    print(table(res["rows"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
