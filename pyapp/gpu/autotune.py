"""Per-adapter kernel variants, chosen by a short measurement on the model's own shapes.

One selection logic (`choose`, async because the browser awaits its readbacks); the native
binding never really suspends, so the sync form `autotune_variants` drives the same
coroutine to completion and adds a disk cache (~/.cache/pyapp/gpu-autotune.json).
Quantized weights are measured in their own format (the tune key names it).
"""
from __future__ import annotations

import json
import os

from .. import formats
from ..models import Model, op
from . import wgsl
from .device import PACKED_DOT, GpuError, cpu_adapter
from .lower import variant_shape

_TUNE_CACHE: dict = {}       # tune key -> variants (this process / page)

# every GEMV variant (bench); sgrR = R columns per subgroup (linear_sgr.wgsl); sgbR = the
# Q4_1 block-word kernel, R columns per subgroup, U units per trip (linear_sgb.wgsl; other
# formats run sg4); sgwR = 8-value units, R columns per subgroup, U units per trip
# (linear_sgw.wgsl: f32 / f16; other formats run sg4); wgwR = the same without subgroups;
# sgqR = sgbR with the input quantized to int8 in the kernel and dot4I8Packed (linear_sgq.wgsl:
# decode; prefill, and adapters without packed_4x8_integer_dot_product, run sgbR); sgqwR = sgqR
# over runs of four blocks read as 5 vec4 (16-byte loads; K % 128 == 0, else it runs as sgqR)
LINEAR_VARIANTS = ("row", "wg", "sg", "sg4", "sgr2", "sgr4", "sgr8", "sgb1", "sgb2", "sgb4",
                   "sgb1u2", "sgb1u4", "sgb2u2", "sgb2u4", "sgb4u2",
                   "sgq1", "sgq2", "sgq4", "sgq2u2", "sgq4u2",
                   "sgqw1", "sgqw2", "sgqw4", "sgqw8", "sgqw1u2", "sgqw2u2", "sgqw4u2",
                   "sgw1", "sgw2", "sgw4", "sgw1u2", "sgw2u2", "sgw4u2", "sgw1u4", "wgw1", "wgw2", "wgw2u2")


# The sgw shapes the autotune measures (layers, and the lm head's extra one): measured on
# the H200, docs/performance.md
SGW_LAYERS, SGW_HEAD = "sgw2", "sgw4"

# Bumped whenever the candidates or the plans they time change, so that a cached choice
# made among older kernels is measured again instead of kept.
TUNE_VERSION = 9


def tune_key(device, K, N, dtype):
    i = device.info
    return (f"v{TUNE_VERSION}|{device.kind}|{i.get('vendor')}|{i.get('architecture')}|{i.get('device')}|"
            f"{i.get('description')}|{K}x{N}|{dtype}")


# the sgqw shape the autotune measures where the layer's input width allows it (K % 128 == 0):
# the H200's best in the 7B q4_1 decode (run 14d: GEMVs 1,530 GB/s vs sgqw2 1,182, sgb2 1,028)
SGQW = "sgqw4"


# workgroup counts measured for an int8-input winner (`sgq_groups`: each workgroup quantizes the
# input row once, then takes several rounds of columns). One workgroup per 4R columns re-reads
# the input row from L2 per workgroup (7B gate/up: 1,376 x 16 KB, 40 % of the nibbles' bytes);
# too few leave the GPU idle. The best count follows the GPU's SMs (H200, 132: 264 gave
# 1,542 -> 1,672 GB/s in the 7B q4_1 decode, 132 gave 1,231, 528 1,515; run 14g), which WebGPU
# does not expose: so measured, over counts that cover 2 per SM / CU on 32..256 of them.
SGQ_GROUPS = (64, 128, 192, 256, 384, 512)


def int8_input_ok(device) -> bool:
    """Whether the autotune may choose a GEMV that rounds its input to int8 (sgq / sgqw): on
    GPUs with the packed int8 dot product, where it buys bandwidth (H200, 7B q4_1: 226 -> 320
    tok/s, run 14d). Not on CPU adapters: there the f32-input kernels keep a Q4_1 model's
    greedy ids those of the f32 reference (the int8 input's ~1 % noise can flip a near-tie:
    SmolLM2's 27th id with sgqw2 forced, two logits 0.37 apart), and speed is not the point."""
    return PACKED_DOT in device.features and not cpu_adapter(device.info)


def candidate_variants(device, dtype="f32", K=None):
    """The plans `measure_variants` times for weights of `dtype` (K: the layer's input width;
    None: as if every wide form could run)."""
    # one row per invocation everywhere (CPU adapters: SwiftShader, lavapipe), or
    # workgroup/subgroup reductions everywhere (real GPUs); measured, not guessed
    par = {"norm_wg": 64, "attention": "wg"}
    out = [{"linear": "row", "norm_wg": 1, "attention": "row"}, {"linear": "wg", **par}]
    if "subgroups" in device.features:
        out.append({"linear": "sg", **par})
        out.append({"linear": "sg4", **par})
        if wgsl.has_q(dtype):             # Q4_1: the block-word kernel (dequantization-bound on GPUs)
            out.append({"linear": "sgb2", **par})
            if int8_input_ok(device):           # ... and its int8-input form
                out.append({"linear": "sgq2", **par})
                if wgsl.has_w(dtype) and (K is None or K % 128 == 0):    # ... with 16-byte loads
                    out.append({"linear": SGQW, **par})
        if wgsl.has_v8(dtype):            # f32 / f16: 16-byte weight loads, the input reused by R columns
            out.append({"linear": SGW_LAYERS, **par})
    elif wgsl.has_v8(dtype) and not cpu_adapter(device.info):
        out.append({"linear": "w" + SGW_LAYERS[1:], **par})    # the same with workgroup-memory sums
    return out


def storage_choices(device, dtype):
    """Storage kinds worth measuring for weights of `dtype`: both where the adapter has
    shader-f16 and the format an f16 loader, else none (the backend's default stands)."""
    if "shader-f16" in device.features and formats.get(dtype).wgsl_f16:
        return list(wgsl.STORAGE)
    return []


def head_candidates(device, base, dtype="f32", K=None):
    """GEMV variants worth measuring on the lm head (vocab x hidden: many short rows),
    given the layer choice `base`.  Several columns per subgroup only pays where there
    are enough rows to fill the GPU with R-column groups; on CPU adapters (`row`) the
    layer choice stands."""
    if base == "row" or "subgroups" not in device.features:
        return []
    return (["sg", "sg4", "sgr2", "sgr4"] + (["sgb2"] if wgsl.has_q(dtype) else [])
            + (["sgq2"] if wgsl.has_q(dtype) and int8_input_ok(device) else [])
            + ([SGQW] if wgsl.has_w(dtype) and int8_input_ok(device) and (K is None or K % 128 == 0) else [])
            + ([SGW_LAYERS, SGW_HEAD] if wgsl.has_v8(dtype) else []))


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


async def measure_linear(device, N, K, variants, dtype="f32", reps=8, rounds=3, extra=None):
    """{variant: seconds per GEMV [N, K] at T = 1} measured on `device` (`extra`: more
    variant keys, e.g. {"storage": "u32"})."""
    from .backend import GpuBackend

    m = Model(arch="tune", config={}, hidden=K, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=K,
              vocab=1, max_context=8, causal=False, embed=[],
              layers=[[op("linear", "x", "y", {"w": "w", "b": None})]], head=[])
    res = {}
    for v in variants:
        b = GpuBackend(device, m, 0, 1, embed=False, head=False, dtype=dtype, shapes={"w": (N, K)},
                       max_tokens=1, max_positions=8, variants={"linear": v, "fuse": False, **(extra or {})},
                       widths={"y": N})
        res[v] = await _time_step(device, b, None, 0, reps, rounds)
        b.destroy()
    return res


async def measure_variants(device, K, N, dtype="f32", reps=8, rounds=3):
    """{variant name: (seconds per layer-like step, variants)} measured on `device`:
    norm + GEMV [N, K] + GEMV [K, N] + causal attention over 64 cached keys."""
    from .backend import GpuBackend

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

    async def one(v):
        b = GpuBackend(device, m, 0, 1, embed=False, head=False, dtype=dtype, shapes=shapes,
                       dtypes={"nw": "f32"}, max_tokens=1, max_positions=64, variants=v)
        cache = b.new_cache(64)
        best = await _time_step(device, b, cache, 63, reps, rounds)
        cache.destroy()
        b.destroy()
        res["/".join(str(v[k]) for k in ("linear", "norm_wg", "attention", "storage", "sgq_groups")
                     if k in v)] = (best, v)

    def winner():
        return min(res.values(), key=lambda r: r[0])[1]

    for v in candidate_variants(device, dtype, K):
        await one(v)
    if len(storage_choices(device, dtype)) > 1:
        # the winner (f16 storage, the default there) once more with the u32 loaders
        await one({**winner(), "storage": "u32"})
    for g in group_candidates(winner()["linear"], N):
        await one({**winner(), "sgq_groups": g})
    return res


def group_candidates(linear, N):
    """The `sgq_groups` counts worth timing for GEMV variant `linear` over N columns: fewer
    workgroups than the one-per-4R default (which stays a candidate: no key), int8-input
    variants only (the others do not quantize per workgroup)."""
    if not linear.startswith("sgq"):
        return []
    R, _ = variant_shape(linear)
    return [g for g in SGQ_GROUPS if g < -(-N // (4 * R))]


def _ffn_shape(model, shapes, dtypes):
    """(N, K, format) of the widest GEMV of layer 0, or None."""
    lin = [o for o in model.layers[0] if o.kind == "linear" and not o.attrs.get("transposed")]
    if not lin:
        return None
    w = max(lin, key=lambda o: shapes[o.weights["w"]][0]).weights["w"]
    N, K = shapes[w]
    return N, K, (dtypes or {}).get(w, "f32")


def _head_shape(model, shapes, dtypes):
    hl = [o for o in model.head if o.kind == "linear" and not o.attrs.get("transposed")
          and o.outs[0] == "logits"]
    if not hl or hl[0].weights["w"] not in shapes:
        return None
    w = hl[0].weights["w"]
    N, K = shapes[w]
    return N, K, (dtypes or {}).get(w, "f32")


def _replays(device) -> tuple[int, int]:
    """(plans replayed per timed submit, timed submits) of a measurement. On a GPU a layer of
    Llama 7B takes ~0.3 ms while a submit + readback varies by 1-2 ms: with 8 replays the
    choice between variants 1.3x apart was a coin toss (H200 run 13l picked `wg` over `sgw2`);
    32 replays, best of 5. CPU adapters: a replay takes milliseconds already."""
    return (8, 3) if cpu_adapter(device.info) else (32, 5)


async def choose(device, model, shapes, dtypes, known: dict):
    """The variants for `model` on `device`: measured once per (adapter, shape, format);
    `known` holds earlier measurements by tune key (read and extended)."""
    ffn = _ffn_shape(model, shapes, dtypes)
    if ffn is None:
        return {"linear": "row", "norm_wg": 1}
    N, K, dt = ffn
    key = tune_key(device, K, N, dt)
    if key not in known:
        res = await measure_variants(device, K, N, dt, *_replays(device))
        known[key] = {"variants": dict(min(res.values(), key=lambda r: r[0])[1]),
                      "seconds": {k: r[0] for k, r in res.items()}}
    best = dict(known[key]["variants"])
    hs = _head_shape(model, shapes, dtypes)
    cands = head_candidates(device, best["linear"], hs[2], hs[1]) if hs else []
    if cands:
        hkey = tune_key(device, hs[1], hs[0], hs[2]) + "|head"
        if hkey not in known:
            # timed as it will run: the layers' storage and workgroup count
            extra = {k: best[k] for k in ("storage", "sgq_groups") if k in best}
            hres = await measure_linear(device, hs[0], hs[1], cands, hs[2], *_replays(device),
                                        extra={"storage": "f16", **extra})
            known[hkey] = {"linear_head": min(hres, key=hres.get), "seconds": hres}
        best["linear_head"] = known[hkey]["linear_head"]
    return best


async def autotune_async(device, model, shapes=None, dtypes=None):
    """Browser form: measure (awaiting readbacks), remembered for the page."""
    from .backend import infer_shapes

    return await choose(device, model, shapes or infer_shapes(model), dtypes, _TUNE_CACHE)


def autotune_variants(device, model, shapes, dtypes):
    """Native form: the same choice, remembered on disk across processes."""
    path = _tune_path()
    disk = {}
    try:
        with open(path) as f:
            disk = json.load(f)
    except (OSError, ValueError):
        pass
    n0 = len(disk)
    best = _run_sync(choose(device, model, shapes, dtypes, disk))
    if len(disk) != n0:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(disk, f, indent=1)
            os.replace(path + ".tmp", path)
        except OSError:
            pass
    return best


def _tune_path():
    return os.path.join(os.path.expanduser("~"), ".cache", "pyapp", "gpu-autotune.json")


def _run_sync(coro):
    """Drive a coroutine that never really suspends (native binding)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise GpuError("coroutine suspended on the native binding")
