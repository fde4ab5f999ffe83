"""`pyapp bench kernels|decode`: WebGPU kernel and decode benchmarks (native binding).

    pyapp bench kernels [--model NAME] [--out PATH] [--big]
    pyapp bench decode  [--model NAME] [--out PATH] [--random] [--prompt-tokens P] [--new-tokens N]
                        [--submit-chunks auto|none|FIRST:REST] [--encode-ahead on|off]

Prints a table and writes JSON (default bench-results/<what>-<model>.json).
Kernel shapes come from the model's config (the store's, or SmolLM2-135M's
built in); `decode` uses the store's weights, or random weights of the model's
shape with --random or when the model is not in the store.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

SMOLLM2_CONFIG = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64,
}


def llama_names(cfg):
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg["num_hidden_layers"]):
        L = f"model.layers.{i}."
        names += [L + "input_layernorm.weight", L + "post_attention_layernorm.weight"]
        names += [L + f"self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [L + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return names


def model_for(name):
    """(Model, model_dir or None): the store's model, else SmolLM2's shape."""
    from .arch import build_model
    from .weightfile import load_model_dir
    d = Path(os.path.expanduser("~/.cache/pyapp/models")) / name
    try:
        from .store import model_path  # type: ignore
        d = Path(model_path(name))
    except Exception:  # noqa: BLE001
        pass
    if (d / "config.json").exists():
        try:
            return load_model_dir(d), d
        except Exception:  # noqa: BLE001
            cfg = json.loads((d / "config.json").read_text())
            if cfg.get("model_type") == "llama":
                return build_model(cfg, llama_names(cfg)), None
    return build_model(SMOLLM2_CONFIG, llama_names(SMOLLM2_CONFIG)), None


def device_info(dev):
    return {"binding": dev.kind, **dev.info, "features": sorted(dev.features), "limits": dev.limits,
            "host": platform.node()}


# ----------------------------------------------------------------------------- timing
# a dispatch that does nothing but wait for the one before: every workgroup's first lane bumps
# one word of a buffer all of them write (wgpu puts a barrier between writers of one buffer)
FLOOR_KERNEL = """@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) w: vec3u, @builtin(local_invocation_index) l: u32) {
  if (l == 0u) { a[w.x % 1024u] += 1u; }
}"""


def floor_dispatches(dev, dispatches):
    """`dispatches` with their work taken out: the same grids, each running FLOOR_KERNEL, so
    that timing them gives what the dispatches cost alone (launch and the barrier between)."""
    pipe = dev.pipeline(FLOOR_KERNEL)
    group = dev.bind_group(pipe, {0: dev.create_buffer(4096)})
    return [(pipe, group, gx, gy, gz) for _p, _g, gx, gy, gz in dispatches]


def gpu_pass_us(dev, groups, reps=10, rounds=1):
    """GPU µs per replay of each dispatch list in `groups` (native binding, timestamp-query):
    one compute pass per list, replayed `reps` times between the pass's two timestamps, all
    passes in one submit; best of `rounds` submits. Dispatches are (pipeline, group, gx, gy, gz)."""
    import struct

    import wgpu
    n = 2 * len(groups)
    qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=n)
    buf = dev.device.create_buffer(size=8 * n, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
    period = dev.device.queue.get_timestamp_period() if hasattr(dev.device.queue, "get_timestamp_period") else 1.0
    best = [1e18] * len(groups)
    for _ in range(rounds):
        enc = dev.device.create_command_encoder()
        for i, ds in enumerate(groups):
            ps = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 2 * i,
                                                          "end_of_pass_write_index": 2 * i + 1})
            for _ in range(reps):
                for pipe, group, gx, gy, gz in ds:
                    ps.set_pipeline(pipe)
                    ps.set_bind_group(0, group)
                    ps.dispatch_workgroups(gx, gy, gz)
            ps.end()
        enc.resolve_query_set(qs, 0, n, buf, 0)
        dev.device.queue.submit([enc.finish()])
        ts = struct.unpack(f"<{n}Q", bytes(dev.device.queue.read_buffer(buf)))
        best = [min(b, (ts[2 * i + 1] - ts[2 * i]) * period / reps / 1e3) for i, b in enumerate(best)]
    qs.destroy()
    buf.destroy()
    return best



def time_recording(dev, rec_list, writes, reps, sync_buf, rounds=3):
    """Seconds per replay of `rec_list` (a list of dispatches), `reps` replays in
    one submit, minus the cost of an empty submit + 4-byte readback."""
    rec = dev.record(list(rec_list) * reps)
    empty = dev.record([])

    def once(r):
        t0 = time.perf_counter()
        dev.submit(r, writes)
        dev.read(sync_buf, 0, 4)
        return time.perf_counter() - t0
    once(rec)
    base = min(once(empty) for _ in range(rounds))
    best = min(once(rec) for _ in range(rounds))
    return max(best - base, 1e-9) / reps, base


def copy_bandwidth(dev, nbytes=256 << 20, reps=10):
    """queue copyBufferToBuffer GB/s (bytes read + written)."""
    nbytes = min(nbytes, dev.limits["max_buffer"] // 2 // 4 * 4)
    a, b = dev.create_buffer(nbytes), dev.create_buffer(nbytes)
    sync = dev.create_buffer(16)
    copies = [(a, 0, b, 0, nbytes)] * reps

    def once():
        t0 = time.perf_counter()
        dev.submit(dev.record([]), (), copy=copies)
        dev.read(sync, 0, 4)
        return time.perf_counter() - t0
    once()
    dt = min(once() for _ in range(3)) / reps
    return {"bytes": nbytes, "seconds": dt, "GBps": 2 * nbytes / dt / 1e9}


def _one_op_backend(dev, layer, shapes, hidden, variants, T, n_heads=1, n_kv_heads=1, head_dim=None,
                    causal=False, dtype="f32", embed=None, vocab=1, head=None, max_pos=64, widths=None):
    from .gpu.backend import GpuBackend
    from .models import Model
    m = Model(arch="bench", config={}, hidden=hidden, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads,
              head_dim=head_dim or hidden, vocab=vocab, max_context=max_pos, causal=causal,
              embed=embed or [], layers=[layer], head=head or [])
    return GpuBackend(dev, m, 0, 1, embed=bool(embed), head=bool(head), dtype=dtype, shapes=shapes,
                      max_tokens=max(T, 1), max_positions=max_pos, variants=variants, widths=widths)


def bench_kernels(dev, model, big=False, reps=50, dtype="f32", gemv_only=None):
    """Every kernel at the model's shapes; `gemv_only`: just the decode GEMVs (T = 1) of those
    variants (format comparisons on slow adapters)."""
    from .gpu.autotune import LINEAR_VARIANTS, candidate_variants
    from .models import op
    rows = []
    D = model.hidden
    c = model.config
    inter = c.get("intermediate_size", 4 * D)
    H, Hkv, hd, V = model.n_heads, model.n_kv_heads, model.head_dim, model.vocab
    from . import formats
    wbytes = formats.get(dtype).nbytes
    sync = dev.create_buffer(16)

    def run(name, b, T, nbytes, flops=0, pos0=0, variant=""):
        rec, _ = b._plan(T, getattr(b, "_bench_cache", None), 0, 1, b.embed, b.head, False,
                         getattr(b, "_bench_sample", False))
        if getattr(b, "_bench_cache", None) is not None:
            b._bench_cache.length = pos0
        writes = [(b.params, 0, b._params(T, pos0))]
        if b.embed:
            from array import array
            writes.append((b.ids_buf, 0, array("I", [i % max(model.vocab, 1) for i in range(T)])))
        disp = rec if isinstance(rec, list) else None
        if disp is None:
            raise RuntimeError("kernel bench needs the native binding")
        dt, base = time_recording(dev, disp, writes, reps, sync)
        rows.append({"kernel": name, "variant": variant, "T": T, "us": dt * 1e6,
                     "GBps": nbytes / dt / 1e9, "GFLOPs": flops / dt / 1e9 if flops else None,
                     "dispatches": len(disp), "submit_readback_us": base * 1e6})

    # GEMV / GEMM over every linear shape of the model (+ the lm head), every variant
    shapes = [(H * hd, D, "q/o"), (Hkv * hd, D, "k/v"), (inter, D, "gate/up"), (D, inter, "down"),
              (V, D, "lm_head")]
    if big:
        shapes += [(8192, 8192, "big"), (16384, 16384, "big")]
    # every GEMV variant (incl. sgrR, which the layer autotune does not try)
    par = [v for v in candidate_variants(dev) if v["linear"] != "row"][:1] or [{}]
    lvars = [{**({"norm_wg": 1, "attention": "row"} if n == "row" else par[0]), "linear": n}
             for n in LINEAR_VARIANTS if n == "row" or n == "wg" or "subgroups" in dev.features]
    if gemv_only:
        lvars = [v for v in lvars if v["linear"] in gemv_only]
    for N, K, what in shapes:
        for v in lvars:
            for T in ((1,) if what == "big" or gemv_only else (1, 32)):
                try:
                    b = _one_op_backend(dev, [op("linear", "x", "y", {"w": "w", "b": None})],
                                        {"w": (N, K)}, K, v, T, dtype=dtype, widths={"y": N})
                except Exception as e:  # noqa: BLE001
                    rows.append({"kernel": f"linear {N}x{K} ({what})", "variant": v["linear"], "error": str(e)[:200]})
                    continue
                try:
                    run(f"linear {N}x{K} ({what})", b, T, wbytes((N, K)) + T * (K + N) * 4, 2 * N * K * T,
                        variant=v["linear"])
                except Exception as e:  # noqa: BLE001
                    rows.append({"kernel": f"linear {N}x{K} ({what})", "variant": v["linear"],
                                 "error": str(e)[:200]})
                del b
    if gemv_only:
        return rows
    # norms
    for wg in (1, 64):
        b = _one_op_backend(dev, [op("rms_norm", "x", "h", {"w": "w"}, eps=1e-5)], {"w": (D,)}, D,
                            {"norm_wg": wg}, 1)
        run(f"rms_norm {D}", b, 1, 3 * D * 4, variant=f"wg{wg}")
    # rope + attention with a KV cache at two context lengths
    for av in ("row", "wg"):
        for ctx in (128, 1024):
            layer = [op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=10000.0),
                     op("attention", ("q", "k", "v"), "a", layer=0, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
                        causal=True, scale=hd ** -0.5)]
            b = _one_op_backend(dev, layer, {}, D, {"attention": av}, 1, H, Hkv, hd, causal=True,
                                max_pos=ctx + 8, widths={"q": H * hd, "k": Hkv * hd, "v": Hkv * hd})
            b._bench_cache = b.new_cache(ctx + 8)
            run(f"rope+kv_write+attention ctx {ctx}", b, 1, 2 * ctx * Hkv * hd * 4, 4 * ctx * H * hd,
                pos0=ctx, variant=av)
    # elementwise
    layer = [op("silu_mul", ("g", "u"), "m")]
    b = _one_op_backend(dev, layer, {}, D, None, 1, widths={"g": inter, "u": inter, "m": inter})
    run(f"silu_mul {inter}", b, 1, 3 * inter * 4)
    b = _one_op_backend(dev, [op("add", ("x", "x2"), "x")], {}, D, None, 1, widths={"x2": D})
    run(f"add {D}", b, 1, 3 * D * 4)
    # embedding gather
    b = _one_op_backend(dev, [], {"tok": (V, D)}, D, None, 1, embed=[op("embed", "ids", "x", {"tokens": "tok"})],
                        vocab=V)
    run(f"embed {V}x{D}", b, 1, 2 * D * 4)
    # sampler (argmax over the vocabulary)
    b = _one_op_backend(dev, [], {"w": (V, D)}, D, None, 1, causal=True, vocab=V,
                        head=[op("linear", "x", "logits", {"w": "w", "b": None})])
    disp = b.sample_dispatches()
    dt, _ = time_recording(dev, disp, [(b.params, 0, b._params(1, 0))], reps, sync)
    rows.append({"kernel": f"sample argmax V={V}", "variant": "", "T": 1, "us": dt * 1e6,
                 "GBps": V * 4 / dt / 1e9, "dispatches": len(disp)})
    from .sampling import SamplingParams
    import numpy as np
    dev.write(b.logits, 0, (np.random.default_rng(0).standard_normal(V) * 3).astype(np.float32).tobytes())
    sp = SamplingParams(greedy=False, top_p=0.9)
    dt, _ = time_recording(dev, disp, [(b.params, 0, b._params(1, 0, sp, 1))], reps, sync)
    rows.append({"kernel": f"sample top_p=0.9 V={V}", "variant": "", "T": 1, "us": dt * 1e6,
                 "GBps": V * 4 / dt / 1e9, "dispatches": len(disp)})
    return rows


# ----------------------------------------------------------------------------- decode

def random_backend(dev, model, dtype="f32", seed=0, **kw):
    """A GpuBackend of the model's shape with random weights: matrices in format `dtype`
    (quantized blocks from gguf's quantize, as llama.cpp writes them), vectors in f32."""
    import numpy as np

    from . import formats
    from .gpu import GpuBackend
    from .gpu.shapes import infer_shapes
    shapes = infer_shapes(model)
    dtypes = {n: (dtype if len(s) == 2 else "f32") for n, s in shapes.items()}
    b = GpuBackend(dev, model, 0, None, None, None, dtype, shapes=shapes, dtypes=dtypes, **kw)
    rng = np.random.default_rng(seed)
    for name, nbytes in b.weight_layout():
        t = b.tensors[name]
        if len(t.shape) == 1:
            a = (1.0 + 0.05 * rng.standard_normal(t.shape, dtype=np.float32))
        else:
            a = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(t.shape[-1] ** -0.5)
        b.write_weight(name, 0, encode(a, formats.get(t.dtype)))
    return b


def encode(a, fmt):
    """float32 array -> the stored bytes of format `fmt`."""
    import numpy as np
    if fmt.quantized:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize
        return quantize(a, GGMLQuantizationType(fmt.ggml_type))
    return np.ascontiguousarray(a, np.float16 if fmt.name == "f16" else np.float32)


def bench_decode(dev, model, model_dir, random=False, dtype="f32", prompt_tokens=32, new_tokens=32,
                 variants=None, linear_head=None, submit_chunks="auto", encode_ahead=True):
    from .gpu import GpuBackend
    from .gpu.autotune import autotune_variants
    from .gpu.shapes import infer_shapes
    from .sampling import SamplingParams
    t0 = time.perf_counter()
    if model_dir is not None and not random:
        b = GpuBackend.load(model_dir, dtype, device=dev, submit_chunks=submit_chunks, encode_ahead=encode_ahead,
                            **({"variants": variants} if variants else {}))
        source = str(model_dir)
    else:
        v = dict(variants or autotune_variants(dev, model, infer_shapes(model), {}))
        if linear_head == "same":
            v.pop("linear_head", None)
        elif linear_head:
            v["linear_head"] = linear_head
        b = random_backend(dev, model, dtype, variants=v, submit_chunks=submit_chunks, encode_ahead=encode_ahead)
        source = "random weights of the model's shape"
    load_s = time.perf_counter() - t0
    sp = SamplingParams()
    prompt = [1 + (i * 7919) % (model.vocab - 1) for i in range(prompt_tokens)]
    res = {"weights": source, "variants": b.variants, "load_seconds": load_s,
           "submit_chunks": chunk_rule(b.submit_chunks), "encode_ahead": b.encode_ahead,
           "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}
    # warm-up (pipelines, plans)
    c = b.new_cache(prompt_tokens + new_tokens + 8)
    tok = b.step(ids=prompt, cache=c, params=sp)
    tok = b.step(ids=[tok], cache=c, params=sp, n=1)
    # prefill
    c = b.new_cache(prompt_tokens + new_tokens + 8)
    x0 = dev.crossings
    t = time.perf_counter()
    tok = b.step(ids=prompt, cache=c, params=sp)
    prefill = time.perf_counter() - t
    # decode
    d0, s0, x1, u0 = b.stats["dispatches"], b.stats["steps"], dev.crossings, b.stats["submits"]
    t = time.perf_counter()
    toks = []
    for n in range(1, new_tokens + 1):
        tok = b.step(ids=[tok], cache=c, params=sp, n=n)
        toks.append(tok)
    dec = time.perf_counter() - t
    steps = b.stats["steps"] - s0
    res.update({
        "prefill_seconds": prefill, "prefill_tokens_per_s": prompt_tokens / prefill,
        "prefill_crossings": x1 - x0,
        "decode_seconds": dec, "decode_tokens_per_s": new_tokens / dec,
        "ms_per_token": dec / new_tokens * 1e3,
        "dispatches_per_token": (b.stats["dispatches"] - d0) / steps,
        "submits_per_token": (b.stats["submits"] - u0) / steps, "readbacks_per_token": 1, "readback_bytes_per_token": 4,
        "ffi_crossings_per_token": (dev.crossings - x1) / new_tokens,
        "ffi_note": "0 on the native binding (no JS); the browser figure comes from tests/browser",
        "host_api_calls_per_token": 3 * (b.stats["dispatches"] - d0) / steps + 6,
        "tokens": toks[:8],
    })
    # host encode cost alone: record + encode without waiting
    rec, nd = b._plan(1, c, 0, model.n_layers, True, True, False, True)
    if hasattr(dev, "device"):
        res["host_encode_ms_per_token"] = host_encode_ms(dev, rec)
    return res


def chunk_rule(rule):
    """How a step-by-step token's pass is cut into submits, in words (backend.SUBMIT_CHUNKS)."""
    if not rule:
        return "one submit"
    return f"first {rule[0]} dispatches, then {rule[1]} each" if rule[1] else f"first {rule[0]}, then the rest"


def parse_chunk_rule(s):
    """--submit-chunks: "auto" (the backend's default), "none", or FIRST:REST."""
    if s == "auto":
        return "auto"
    if s in ("none", "0"):
        return None
    a, _, b = s.partition(":")
    return (int(a), int(b or a))


def host_encode_ms(dev, rec, reps=5):
    """Encoding one decode token's pass (set_pipeline / set_bind_group / dispatch), no submit
    (native binding: its own `encode`, what `submit` runs)."""
    t = time.perf_counter()
    for _ in range(reps):
        dev.encode(rec).finish()
    return (time.perf_counter() - t) / reps * 1e3


# ----------------------------------------------------------------------------- CLI

def _table(rows, cols):
    w = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    out = ["  ".join(c.ljust(w[c]) for c in cols)]
    for r in rows:
        out.append("  ".join(_fmt(r.get(c)).ljust(w[c]) for c in cols))
    return "\n".join(out)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pyapp bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kernels", "decode"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out")
    from .cli import add_format_flag
    add_format_flag(ap)
    ap.add_argument("--random", action="store_true", help="random weights of the model's shape")
    ap.add_argument("--big", action="store_true", help="also 8192^2 and 16384^2 GEMVs")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--linear", choices=["row", "wg", "sg", "sg4", "sgr2", "sgr4", "sgr8"],
                    help="force the GEMV variant")
    ap.add_argument("--linear-head", choices=["same", "row", "wg", "sg", "sg4", "sgr2", "sgr4", "sgr8"],
                    help="force the lm head's GEMV variant (`same`: the layers' variant, as before "
                         "`linear_head` existed); default: autotuned (--random only)")
    ap.add_argument("--no-fuse", action="store_true", help="one dispatch per linear (no q/k/v, gate/up fusion)")
    ap.add_argument("--gemv-only", help="kernels: only the T = 1 GEMVs of these variants (comma list)")
    ap.add_argument("--submit-chunks", default="auto", type=parse_chunk_rule,
                    help="decode: a step-by-step token's pass cut into submits, FIRST:REST dispatches "
                         "(none: one submit; auto: backend.SUBMIT_CHUNKS, one submit on CPU adapters)")
    ap.add_argument("--encode-ahead", default="on", choices=["on", "off"],
                    help="decode: encode the next step while the GPU runs this one (backend.ENCODE_AHEAD)")
    ap.add_argument("--variants", help="decode: JSON merged into the variants, e.g. "
                    '\'{"off": ["fuse_qkv_attention", "fold_merge"]}\' (the 6-dispatch layer of before)')
    a = ap.parse_args(argv)
    from .gpu.native import NativeDevice
    dev = NativeDevice.create()
    model, model_dir = model_for(a.model)
    result = {"what": a.what, "model": a.model, "dtype": a.dtype, "device": device_info(dev),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if a.what == "kernels":
        result["copy"] = copy_bandwidth(dev)
        rows = bench_kernels(dev, model, big=a.big, reps=a.reps, dtype=a.dtype,
                             gemv_only=a.gemv_only.split(",") if a.gemv_only else None)
        result["kernels"] = rows
        print(f"device: {dev.info.get('device') or dev.info.get('description')}  "
              f"copyBufferToBuffer {result['copy']['GBps']:.1f} GB/s (read+write)")
        print(_table(rows, ["kernel", "variant", "T", "us", "GBps", "GFLOPs", "dispatches"]))
    else:
        variants = None
        if a.no_fuse and not a.linear:
            a.linear = "row" if "llvmpipe" in str(dev.info) or "swiftshader" in str(dev.info) else "sg"
        if a.linear:
            row = a.linear == "row"
            variants = {"linear": a.linear, "norm_wg": 1 if row else 64, "attention": "row" if row else "wg"}
            if a.no_fuse:
                variants["fuse"] = False
        if a.variants:
            from .gpu.autotune import autotune_variants
            from .gpu.shapes import infer_shapes
            variants = {**(variants or autotune_variants(dev, model, infer_shapes(model), {})),
                        **json.loads(a.variants)}
        r = bench_decode(dev, model, model_dir, a.random, a.dtype, a.prompt_tokens, a.new_tokens,
                         variants, a.linear_head, a.submit_chunks, a.encode_ahead == "on")
        result["decode"] = r
        keys = ["weights", "variants", "submit_chunks", "encode_ahead", "prefill_tokens_per_s", "decode_tokens_per_s", "ms_per_token",
                "dispatches_per_token", "host_encode_ms_per_token", "ffi_crossings_per_token",
                "submits_per_token", "readback_bytes_per_token"]
        for k in keys:
            print(f"{k:28s} {_fmt(r[k])}")
    out = Path(a.out or f"bench-results/{a.what}-{a.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
