# Runs inside Pyodide in Deno (benchmarks/deno/run_decode.mjs with spec "script": "host_step.py"):
# the host µs per token of the browser binding's pipelined decode (pyapp.bench.pipelined_host_us).
# spec "stub": true replaces the JS helper's submit and readU32 by no-ops (a readback resolves at
# once with token 0; a pipelined one is already resolved at its first take, or with "pending"
# still a promise there, as when the loop has caught up with the GPU), so what is timed is the page's Python, the FFI and the event loop alone;
# false runs the real binding (use a small config: lavapipe's "GPU" time is in the wall time);
# "empty": true (with stub false) the real binding with every step's recording empty (the writes,
# the copy, submit and mapAsync real; no dispatch): the CPU time per token is the host's.
import json

import js
from pyodide.code import run_js

import pyapp.gpu.browser as gb
from pyapp.arch import build_model
from pyapp.bench import pipelined_host_us
from pyapp.gpu import GpuBackend

spec = json.loads(js.SPEC)
stub = spec.get("stub", True)
if stub:    # before the device: BrowserDevice looks the helper's methods up once
    gb._helper = run_js("""(H) => Object.assign({}, H, {async readU32() { return 0; },
        submit(d, state, rec, copies, ends, mapRead) {   // a pipelined read resolved at once
            if (mapRead) (state.reads ||= new Map()).set(mapRead, {done: !PENDING, v: 0, err: null,
                                                                   p: Promise.resolve()}); }})"""
                      .replace("PENDING", "true" if spec.get("pending") else "false"))(gb.helper())
dev = await gb.request_device()
model = build_model(spec["config"], spec["names"])
be = GpuBackend(dev, model, 0, None, None, None, spec["dtype"], variants=spec.get("variants") or None)
if spec.get("empty"):    # the real binding, every step's recording empty: writes, copy, mapAsync
    empty = (dev.record([]), 0)
    be._plan = lambda *a, **k: empty
elif not stub:
    for name, _nbytes in be.weight_layout():
        be.write_weight(name, 0, js.makeWeight(name, list(be.tensors[name].shape), spec["dtype"]))
    await dev.check()
P, N = spec["prompt_tokens"], spec["new_tokens"]
prompt = [1 + (i * 7919) % (model.vocab - 1) for i in range(P)]


def cpu():
    u = js.process.cpuUsage()
    return (u.user + u.system) / 1e6


r = await pipelined_host_us(be, P + N + 8, prompt, N, spec.get("depth") or 4, spec.get("profile", 0), cpu)
r.update(binding="browser (Pyodide in Deno)" + (", pending reads" if spec.get("pending") else "")
         + (", empty passes" if spec.get("empty") else ""), stub=stub, layers=model.n_layers, dtype=spec["dtype"])
json.dumps(r)
