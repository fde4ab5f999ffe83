"""Runs inside Pyodide (tests/browser/gpu_check.html): the kernel checks and model
generations of tests/test_gpu_browser.py through navigator.gpu.  Stdlib only."""
import base64
import json
import time
from array import array

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from pyapp.gpu import GpuBackend, GpuError, browser
from pyapp.arch import build_model
from pyapp.models import Model, Op
from pyapp.weightfile import parse_safetensors_header
from pyapp.sampling import SamplingParams


def f32(b64):
    return array("f", base64.b64decode(b64))


def relerr(got, exp):
    if any(g != g for g in got):
        return float("inf")
    m = max(abs(e) for e in exp) or 1e-30
    return max(abs(g - e) for g, e in zip(got, exp)) / m


def mkop(d):
    return Op(d["kind"], tuple(d["ins"]), tuple(d["outs"]), dict(d["weights"]), dict(d["attrs"]))


async def run_case(dev, c):
    m = c["model"]
    model = Model(arch="test", config={}, hidden=m["hidden"], n_layers=1, n_heads=m["n_heads"],
                  n_kv_heads=m["n_kv_heads"], head_dim=m["head_dim"], vocab=m["vocab"], max_context=64,
                  causal=m["causal"], embed=[mkop(o) for o in m["embed"]],
                  layers=[[mkop(o) for o in m["layer"]]], head=[mkop(o) for o in m["head"]])
    shapes = {n: tuple(w["shape"]) for n, w in c["weights"].items()}
    g = GpuBackend(dev, model, 0, 1, embed=bool(m["embed"]), head=bool(m["head"]), dtype=c["dtype"],
                   shapes=shapes, max_tokens=16, max_positions=64, variants=c.get("variants"),
                   max_binding=c.get("max_binding"), widths=c.get("widths"))
    for n, w in c["weights"].items():
        g.write_weight(n, 0, base64.b64decode(w["data"]))
    if c.get("sample"):
        s = c["sample"]
        g.device.write(g.logits, 0, f32(s["logits"]))
        sp = SamplingParams(**s["params"])
        rec = dev.record(g.sample_dispatches())
        dev.submit(rec, [(g.params, 0, g._params(1, 0, sp, s["n"]))], copy=(g.tok_buf, 0, g.readback, 0, 4))
        tok = await dev.read_u32(g.readback)
        return {"ok": tok == s["expected"], "got": tok, "expected": s["expected"]}
    cache = g.new_cache(64)
    worst = 0.0
    before = set(dev._pipelines)
    for st in c["steps"]:
        g.poison()
        if "ids" in st:
            rec, T, pos0, _h, writes = g._prepare(st["ids"], None, cache, 0, 1, False, False, False)
        else:
            rec, T, pos0, _h, writes = g._prepare(None, list(f32(st["x"])), cache, 0, 1, False, False, False)
        dev.submit(rec, writes)
        cache.length = pos0 + T
        for name, exp in st["check"].items():
            got = await g.read_activation_async(name, T)
            worst = max(worst, relerr(got, f32(exp)))
    # int8_dot: a kernel of this case uses dot4I8Packed (the sgq GEMV), wide: its 16-byte form
    # (sgqw); tol: a case's own bound
    new = [s for s in dev._pipelines if s not in before]
    return {"ok": worst <= c.get("tol", 1e-5), "relerr": worst,
            "int8_dot": any("dot4I8Packed" in s for s in new),
            "wide": any("fn quadw_at" in s and "dot4I8Packed" in s for s in new)}


async def fetch_bytes(url, start=None, end=None):
    """A Uint8Array proxy of `url` (bytes [start, end) with an HTTP Range request)."""
    opts = {}
    if start is not None:
        opts = {"headers": {"Range": f"bytes={start}-{end - 1}"}}
    r = await js.fetch(url, to_js(opts, dict_converter=js.Object.fromEntries))
    if not r.ok:
        raise RuntimeError(f"GET {url}: HTTP {r.status}")
    return js.Uint8Array.new(await r.arrayBuffer())


async def load_model(dev, base, dtype="f32", **kw):
    """A GpuBackend for the model folder at `base`, weights streamed with Range
    requests straight into GPU buffers (Python holds only JS proxies)."""
    cfg = json.loads(str(await (await js.fetch(base + "/config.json")).text()))
    fname = "model.safetensors" if dtype == "f32" else f"model.{dtype}.safetensors"
    url = f"{base}/{fname}"
    n8 = (await fetch_bytes(url, 0, 8)).to_py()
    n = int.from_bytes(bytes(n8), "little")
    head_raw = bytes(n8) + bytes((await fetch_bytes(url, 8, 8 + n)).to_py())
    header, data0 = parse_safetensors_header(head_raw)
    model = build_model(cfg, header.keys())
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    dtypes = {k: v["dtype"] for k, v in header.items()}
    if kw.get("variants") == "auto":            # the per-adapter measured autotune, in the page
        from pyapp.gpu.autotune import autotune_async
        kw["variants"] = await autotune_async(dev, model, shapes, dtypes)
    be = GpuBackend(dev, model, 0, None, None, None, dtype, shapes=shapes, dtypes=dtypes, **kw)
    nbytes = 0
    for name, size in be.weight_layout():
        b0, b1 = header[name]["data_offsets"]
        u8 = await fetch_bytes(url, data0 + b0, data0 + b1)
        be.write_weight(name, 0, u8)
        nbytes += b1 - b0
        del u8
    await dev.check()
    return be, nbytes


async def generate(dev, spec):
    t0 = time.perf_counter()
    be, nbytes = await load_model(dev, spec["url"], spec.get("dtype", "f32"),
                                  max_tokens=max(16, len(spec["prompt"])),
                                  max_positions=len(spec["prompt"]) + spec["new_tokens"] + 8,
                                  variants=spec.get("variants"))
    load_s = time.perf_counter() - t0
    out = {"name": spec["name"], "load_seconds": load_s, "weight_bytes": nbytes, "variants": be.variants}
    if not be.model.causal:
        vec = await be.forward_async(ids=spec["prompt"])
        out["embedding"] = list(vec)
        return out
    sp = SamplingParams(**spec.get("params", {}))
    cache = be.new_cache(len(spec["prompt"]) + spec["new_tokens"] + 8)
    t = time.perf_counter()
    tok = await be.step_async(ids=spec["prompt"], cache=cache, params=sp, n=0)
    out["prefill_seconds"] = time.perf_counter() - t
    toks = [tok]
    c0, t1 = dev.crossings, time.perf_counter()
    first_decode = None
    for n in range(1, spec["new_tokens"]):
        tok = await be.step_async(ids=[tok], cache=cache, params=sp, n=n)
        toks.append(tok)
        if first_decode is None:
            first_decode = (dev.crossings - c0, time.perf_counter() - t1)
            c0, t1, s1 = dev.crossings, time.perf_counter(), be.stats["submits"]
    n_dec = spec["new_tokens"] - 2
    out.update(tokens=toks, decode_seconds=time.perf_counter() - t1,
               decode_tokens=n_dec,
               crossings_first_decode_step=first_decode[0] if first_decode else None,
               crossings_per_token=(dev.crossings - c0) / n_dec if n_dec > 0 else None,
               encode_ahead=be.encode_ahead,
               submits_per_token=(be.stats["submits"] - s1) / n_dec if n_dec > 0 else None,
               dispatches_per_token=be.stats["dispatches"] / max(be.stats["steps"], 1))
    out["decode_tokens_per_s"] = n_dec / out["decode_seconds"] if n_dec > 0 else None
    if spec.get("submit_chunks"):
        # the same decode again with each token's pass cut into submits (GpuBackend.submit_chunks)
        be.submit_chunks = tuple(spec["submit_chunks"])
        be.encode_ahead = False       # every step chunked (ahead, a step after the first goes whole)
        cache = be.new_cache(len(spec["prompt"]) + spec["new_tokens"] + 8)
        toks = [await be.step_async(ids=spec["prompt"], cache=cache, params=sp, n=0)]
        for n in range(1, spec["new_tokens"]):
            if n == 2:                # counted from the second decode step (the first records the plan)
                c0, s0 = dev.crossings, be.stats["submits"]
            toks.append(await be.step_async(ids=[toks[-1]], cache=cache, params=sp, n=n))
        k = max(spec["new_tokens"] - 2, 1)
        out.update(tokens_chunked=toks, crossings_per_token_chunked=(dev.crossings - c0) / k,
                   submits_per_token_chunked=(be.stats["submits"] - s0) / k)
    be.destroy()
    return out


async def main(cfg_json):
    cfg = json.loads(cfg_json)
    dev = await browser.request_device()
    res = {"info": dev.info, "features": sorted(dev.features), "limits": dev.limits, "cases": {},
           "models": []}
    cases = json.loads(str(await (await js.fetch(cfg["cases"])).text())) if cfg.get("cases") else []
    t = time.perf_counter()
    for c in cases:
        try:
            res["cases"][c["name"]] = await run_case(dev, c)
        except Exception as e:  # noqa: BLE001
            res["cases"][c["name"]] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    res["cases_seconds"] = time.perf_counter() - t
    # errors surface as exceptions with the WebGPU message
    try:
        dev.pipeline("@compute @workgroup_size(1) fn main() { let x: u32 = nope; }")
        await dev.check()
        res["validation_error"] = None
    except GpuError as e:
        res["validation_error"] = str(e)[:500]
    for _ in range(2):              # drain the follow-up "invalid pipeline" error
        try:
            await dev.check()
        except GpuError:
            pass
    for spec in cfg.get("models", []):
        try:
            res["models"].append(await generate(dev, spec))
        except Exception as e:  # noqa: BLE001
            res["models"].append({"name": spec["name"], "error": f"{type(e).__name__}: {e}"[:3000]})
    return json.dumps(res)
