# Runs inside Pyodide in Deno (benchmarks/deno/run_decode.mjs): the browser binding's decode
# loop, timed like pyapp.bench.bench_decode. Top-level await; the last expression is the result.
import json
import time

import js

import pyapp.gpu.browser as gb
from pyapp.arch import build_model
from pyapp.gpu import GpuBackend
from pyapp.gpu.autotune import autotune_async
from pyapp.sampling import SamplingParams

spec = json.loads(js.SPEC)
dev = await gb.request_device()
model = build_model(spec["config"], spec["names"])
variants = spec.get("variants") or await autotune_async(dev, model)
t = time.perf_counter()
be = GpuBackend(dev, model, 0, None, None, None, spec["dtype"], variants=variants)
for name, _nbytes in be.weight_layout():
    be.write_weight(name, 0, js.makeWeight(name, list(be.tensors[name].shape), spec["dtype"]))
await dev.check()
load_s = time.perf_counter() - t

P, N = spec["prompt_tokens"], spec["new_tokens"]
sp = SamplingParams()
prompt = [1 + (i * 7919) % (model.vocab - 1) for i in range(P)]


async def run(n_new):
    c = be.new_cache(P + N + 8)
    t = time.perf_counter()
    tok = await be.step_async(ids=prompt, cache=c, params=sp)
    prefill = time.perf_counter() - t
    d0, x0, toks = be.stats["dispatches"], dev.crossings, [tok]
    t = time.perf_counter()
    for n in range(1, n_new + 1):
        tok = await be.step_async(ids=[tok], cache=c, params=sp, n=n)
        toks.append(tok)
    return prefill, time.perf_counter() - t, be.stats["dispatches"] - d0, dev.crossings - x0, toks


await run(2)                       # warm-up: pipelines, plans
prefill, dec, nd, nx, toks = await run(N)
from pyapp.edge.session import PIPELINE_AHEAD_S, PIPELINE_DEPTH  # noqa: E402  (what the page uses)

# a fixed depth when the spec names one (bench_compare --deno-depth), else the page's rule
DEPTH = spec.get("depth") or PIPELINE_DEPTH
AHEAD_S = None if spec.get("depth") else PIPELINE_AHEAD_S


async def pipelined():
    """GpuBackend.decode_async: DEPTH steps in flight, their mapAsync pending together."""
    c = be.new_cache(P + N + 8)
    res = await be.decode_async(prompt, c, sp, N + 1, depth=DEPTH, ahead_s=AHEAD_S)
    return res.decode_seconds, res.ids      # token 0's read to token N's (as bench_compare)


try:
    await pipelined()
    pdec, ptoks = await pipelined()
    pipe = {"pipelined_decode_tokens_per_s": N / pdec, "pipelined_depth": DEPTH, "pipelined_ahead_s": AHEAD_S,
            "pipelined_same_tokens": ptoks == toks}
except Exception as e:  # noqa: BLE001  (keep the step-by-step row)
    pipe = {"pipelined_error": repr(e)[:500]}


async def host_costs(reps=10):
    """ms of one empty submit + 4-byte readback (the round-trip floor), and ms of host time
    to encode + submit one decode token's pass (JS side, no wait)."""
    c = be.new_cache(P + 8)
    await be.step_async(ids=prompt, cache=c, params=sp)
    empty = dev.record([])
    t = time.perf_counter()
    for _ in range(reps):
        dev.submit(empty, [], copy=(be.tok_buf, 0, be.readback, 0, 4))
        await dev.read_u32(be.readback)
    rt = (time.perf_counter() - t) / reps
    rec, _ = be._plan(1, c, 0, model.n_layers, True, True, False, True)
    writes = [(be.params, 0, be._params(1, c.length))]
    t = time.perf_counter()
    for _ in range(reps):
        dev.submit(rec, writes)
    enc = (time.perf_counter() - t) / reps
    await dev.read_u32(be.readback)
    return rt * 1e3, enc * 1e3


roundtrip_ms, encode_ms = await host_costs()
json.dumps({
    "binding": "browser (Pyodide FFI over Deno navigator.gpu)", "variants": be.variants,
    "adapter": dev.info, "features": sorted(dev.features), "load_seconds": load_s,
    "prompt_tokens": P, "new_tokens": N, "prefill_seconds": prefill,
    "decode_seconds": dec, "decode_tokens_per_s": N / dec, "ms_per_token": dec / N * 1e3,
    "dispatches_per_token": nd / N,
    **pipe,
    "empty_submit_readback_ms": roundtrip_ms, "host_encode_submit_ms_per_token": encode_ms, "ffi_crossings_per_token": nx / N, "tokens": toks,
})
