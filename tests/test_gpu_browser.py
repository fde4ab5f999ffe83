"""The WebGPU backend in the browser: headless Chromium (SwiftShader WebGPU) loads
Pyodide from the npm package, installs the pyapp wheel with micropip, and runs
tests/browser/gpu_check.py through navigator.gpu: the kernel checks (references
computed here with the numpy executor), greedy generations of tiny models and of
SmolLM2-135M at split 0 (tokens identical to numpy), FFI crossings per token.

Run alone with `-s` to print the figures.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pyapp.decode import generate
from pyapp.models import op
from pyapp.numpy_backend import KVCache, NumpyBackend
from pyapp.sampling import SamplingParams, sample_numpy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
               "--use-angle=swiftshader", "--use-webgpu-adapter=swiftshader",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-quic", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = [pytest.mark.browser, pytest.mark.gpu,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium"),
              pytest.mark.skipif(not (ROOT / "node_modules/pyodide/pyodide.js").exists(),
                                 reason="npm pyodide not installed")]


# ----------------------------------------------------------------------------- serving

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from a route table, with single-range `Range` support."""

    routes: dict = {}

    def log_message(self, *a):
        pass

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        for prefix, d in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                return str(Path(d) / path[len(prefix):].lstrip("/"))
        return "/nonexistent"

    def end_headers(self):
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def guess_type(self, path):
        if str(path).endswith((".mjs", ".js")):
            return "text/javascript"
        if str(path).endswith(".wasm"):
            return "application/wasm"
        return super().guess_type(path)

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, b = rng.split("=", 1)[1].split("-")
        start = int(a)
        end = min(int(b) if b else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._range_left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        n = getattr(self, "_range_left", None)
        if n is None:
            return super().copyfile(source, outputfile)
        while n > 0:
            chunk = source.read(min(n, 1 << 20))
            if not chunk:
                break
            outputfile.write(chunk)
            n -= len(chunk)
        self._range_left = None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels)],
                   check=True, cwd=str(ROOT), env={**os.environ, "PIP_NO_BUILD_ISOLATION": "1"})
    mp = sorted((ROOT / "web/wheels").glob("micropip-*.whl"))
    if mp:
        shutil.copy(mp[-1], wheels)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "micropip", "-d",
                        str(wheels)], check=True)
    routes = {"/pyodide": ROOT / "node_modules/pyodide", "/wheels": wheels,
              "/browser": ROOT / "tests/browser", "/data": tmp_path_factory.mktemp("data")}
    handler = type("H", (RangeHandler,), {"routes": routes})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    site = dict(url=url, routes=routes,
                wheel=url + "/wheels/" + next(wheels.glob("pyapp-*.whl")).name,
                micropip=url + "/wheels/" + next(wheels.glob("micropip-*.whl")).name)
    yield site
    srv.shutdown()


def run_page(site, cfg, timeout_s=900):
    from playwright.sync_api import sync_playwright
    logs = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        try:
            page = b.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda m: logs.append(m.text))
            page.goto(site["url"] + "/browser/gpu_check.html")
            cfg = {"wheel": site["wheel"], "micropip": site["micropip"], **cfg}
            return page.evaluate("(cfg) => window.runCheck(cfg)", cfg), logs
        finally:
            b.close()


# ----------------------------------------------------------------------------- kernel cases

def _b64(a):
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def _opd(o):
    return {"kind": o.kind, "ins": list(o.ins), "outs": list(o.outs), "weights": o.weights,
            "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.attrs.items()}}


def case(name, layer, weights, T, hidden, check, steps=1, causal=False, n_heads=1, n_kv_heads=1,
         head_dim=None, dtype="f32", variants=None, max_binding=None, ids=None, vocab=1, embed=None,
         seed=0, widths=None):
    """A kernel check (the same construction as tests/test_gpu_kernels.py), references
    computed here with the numpy executor."""
    from pyapp.models import Model
    rng = np.random.default_rng(seed)
    head_dim = head_dim or hidden
    m = Model(arch="test", config={}, hidden=hidden, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads,
              head_dim=head_dim, vocab=vocab, max_context=64, causal=causal, embed=embed or [],
              layers=[layer], head=[])
    ref, up = {}, {}
    for n, a in weights.items():
        if dtype in ("q4_1", "q8_0"):     # GGUF blocks; the reference is gguf's dequantize
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize, quantize
            t = GGMLQuantizationType[dtype.upper()]
            raw = quantize(np.asarray(a, np.float32), t)
            ref[n], up[n] = dequantize(raw, t), raw.tobytes()
        elif dtype == "f16":
            h = np.asarray(a, np.float16)
            ref[n], up[n] = h.astype(np.float32), h.tobytes()
        else:
            ref[n] = np.asarray(a, np.float32)
            up[n] = ref[n].tobytes()
    nb = NumpyBackend(m, ref)
    nc = KVCache(m, 0, 1, 64)
    out_steps = []
    for s in range(steps):
        Ts = T if s == 0 else 1
        env, st = {}, {}
        if embed:
            step_ids = ids if s == 0 else [int(rng.integers(vocab))]
            env["ids"] = np.asarray(step_ids)
            st["ids"] = [int(i) for i in step_ids]
        else:
            env["x"] = rng.standard_normal((Ts, hidden)).astype(np.float32)
            st["x"] = _b64(env["x"])
        ctx = dict(pos0=nc.length, cache=nc)
        for o in m.ops(0, 1, embed=bool(embed), head=False):
            nb.run_op(o, env, ctx)
        nc.length += len(env["ids"]) if embed else Ts
        st["check"] = {n: _b64(env[n]) for n in check}
        out_steps.append(st)
    return {"name": name, "dtype": dtype, "variants": variants, "max_binding": max_binding,
            "widths": widths,
            "model": {"hidden": hidden, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "head_dim": head_dim,
                      "vocab": vocab, "causal": causal, "embed": [_opd(o) for o in (embed or [])],
                      "layer": [_opd(o) for o in layer], "head": []},
            "weights": {n: {"shape": list(np.shape(a)), "data": base64.b64encode(up[n]).decode()}
                        for n, a in weights.items()},
            "steps": out_steps}


def sample_case(name, logits, sp, n):
    V = logits.size
    return {"name": name, "dtype": "f32", "widths": None,
            "model": {"hidden": 4, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4, "vocab": V, "causal": True,
                      "embed": [], "layer": [],
                      "head": [_opd(op("linear", "x", "logits", {"w": "w", "b": None}))]},
            "weights": {"w": {"shape": [V, 4], "data": base64.b64encode(bytes(V * 16)).decode()}},
            "sample": {"logits": _b64(logits), "params": sp.__dict__, "n": n,
                       "expected": sample_numpy(logits, sp, n)}}


def sgq_tol(c):
    """The relative-error tolerance (max |err| / max |ref|) of a one-token Q4_1 GEMV case on
    int8 inputs: the largest per-column bound of test_gpu_storage.int8_input_bound (derived
    there) over the largest output, + 1e-5 for f32."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from test_gpu_storage import int8_input_bound
    N, K = c["weights"]["w"]["shape"]
    raw = np.frombuffer(base64.b64decode(c["weights"]["w"]["data"]), np.uint8).reshape(N, -1)
    W = dequantize(raw, GGMLQuantizationType.Q4_1).astype(np.float64)
    x = np.frombuffer(base64.b64decode(c["steps"][0]["x"]), np.float32).reshape(1, K)
    bound, _ = int8_input_bound(raw, W, x)
    return float(bound.max() / np.abs(x.astype(np.float64) @ W.T).max()) * (1 + 1e-3) + 1e-5


def make_cases():
    rng = np.random.default_rng(21)
    cs = []
    D, N = 76, 135
    lw = {"w1": rng.standard_normal((N, D)) * 0.1, "b1": rng.standard_normal(N),
          "w2": rng.standard_normal((D, N)) * 0.1}
    lin = [op("linear", "x", "f", {"w": "w1", "b": "b1"}), op("linear", "f", "h", {"w": "w2", "b": None})]
    for v in ("row", "wg", "sg"):
        for dt in ("f32", "f16"):
            for T in (1, 7):
                cs.append(case(f"linear-{v}-{dt}-T{T}", lin, lw, T, D, ["f", "h"], dtype=dt,
                               variants={"linear": v}))
    # 8-value units (K % 8 == 0): sgw with subgroups, wgw with workgroup-memory sums
    lw8 = {"w1": rng.standard_normal((N, 72)) * 0.1, "b1": rng.standard_normal(N),
           "w2": rng.standard_normal((72, N)) * 0.1}           # K = 135: the vec4 fallback
    lin8 = [op("linear", "x", "f", {"w": "w1", "b": "b1"}), op("linear", "f", "h", {"w": "w2", "b": None})]
    for v in ("sgw2", "wgw2"):
        for dt in ("f32", "f16"):
            for T in (1, 5):
                cs.append(case(f"linear8-{v}-{dt}-T{T}", lin8, lw8, T, 72, ["f", "h"],
                               dtype=dt, variants={"linear": v}))
    tw = {"w": rng.standard_normal((37, 101)) * 0.1, "b": rng.standard_normal(101)}
    cs.append(case("linear-transposed", [op("linear", "x", "f", {"w": "w", "b": "b"}, transposed=True)],
                   tw, 5, 37, ["f"]))
    cs.append(case("linear-split-weight", [op("linear", "x", "f", {"w": "w", "b": None})],
                   {"w": rng.standard_normal((203, 72)) * 0.1}, 3, 72, ["f"], max_binding=4096))
    D = 83
    nw = {"nw": 1 + 0.1 * rng.standard_normal(D), "lw": 1 + 0.1 * rng.standard_normal(D),
          "lb": 0.1 * rng.standard_normal(D)}
    norms = [op("rms_norm", "x", "h", {"w": "nw"}, eps=1e-5),
             op("layer_norm", "h", "h", {"w": "lw", "b": "lb"}, eps=1e-12),
             op("layer_norm", "x", "x", {"w": "lw", "b": "lb"}, eps=1e-5)]
    for wg in (1, 64):
        cs.append(case(f"norms-wg{wg}-f16", norms, nw, 9, D, ["h", "x"], dtype="f16", variants={"norm_wg": wg}))
    D, N = 45, 77
    ew = {"wg": rng.standard_normal((N, D)) * 0.5, "wu": rng.standard_normal((N, D)) * 0.5,
          "wd": rng.standard_normal((D, N)) * 0.2}
    mlp = [op("linear", "x", "g", {"w": "wg", "b": None}), op("linear", "x", "u", {"w": "wu", "b": None}),
           op("silu_mul", ("g", "u"), "m"), op("linear", "m", "d", {"w": "wd", "b": None}),
           op("add", ("x", "d"), "x")]
    cs.append(case("silu_mul-add", mlp, ew, 6, D, ["m", "x"]))
    for v in ("wg", "sg", "row"):      # g and u fused into one dispatch (wg/sg: g, u never stored)
        cs.append(case(f"fused-gemv-{v}", mlp, ew, 6, D, ["g", "u", "m", "x"] if v == "row" else ["m", "x"],
                       variants={"linear": v, "fuse": True}))
    gw = {"w": rng.standard_normal((131, 45)) * 0.6, "w2": rng.standard_normal((131, 45)) * 0.6}
    for kind in ("gelu", "gelu_tanh"):
        cs.append(case(kind, [op("linear", "x", "f", {"w": "w", "b": None}), op(kind, "f", "f"),
                              op("linear", "x", "u", {"w": "w2", "b": None}), op(kind, "u", "g")],
                       gw, 5, 45, ["f", "g"]))
    cs.append(case("split", [op("linear", "x", "qkv", {"w": "w", "b": None}, transposed=True),
                             op("split", "qkv", ("q", "k", "v"), sizes=(21, 21, 21))],
                   {"w": rng.standard_normal((21, 63)) * 0.3}, 4, 21, ["q", "k", "v"]))
    H, Hkv, hd, D = 6, 2, 10, 30
    aw = {"wq": rng.standard_normal((H * hd, D)) * 0.3, "wk": rng.standard_normal((Hkv * hd, D)) * 0.3,
          "wv": rng.standard_normal((Hkv * hd, D)) * 0.3}
    att = [op("linear", "x", "q", {"w": "wq", "b": None}), op("linear", "x", "k", {"w": "wk", "b": None}),
           op("linear", "x", "v", {"w": "wv", "b": None}),
           op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=10000.0),
           op("attention", ("q", "k", "v"), "a", layer=0, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
              causal=True, scale=hd ** -0.5)]
    for v in ("row", "wg"):
        cs.append(case(f"rope-attention-gqa-causal-{v}", att, aw, 11, D, ["q", "k", "a"], steps=3, causal=True,
                       n_heads=H, n_kv_heads=Hkv, head_dim=hd, variants={"attention": v}))
    H, hd = 3, 7
    D = H * hd
    bw = {k: rng.standard_normal((D, D)) * 0.3 for k in ("wq", "wk", "wv")}
    cs.append(case("attention-bidirectional", [op("linear", "x", "q", {"w": "wq", "b": None}),
                                               op("linear", "x", "k", {"w": "wk", "b": None}),
                                               op("linear", "x", "v", {"w": "wv", "b": None}),
                                               op("attention", ("q", "k", "v"), "a", layer=0, n_heads=H,
                                                  n_kv_heads=H, head_dim=hd, causal=False, scale=hd ** -0.5)],
                   bw, 13, D, ["a"], n_heads=H, head_dim=hd))
    V, D = 203, 38
    ew = {"tok": rng.standard_normal((V, D)), "pos": rng.standard_normal((64, D)),
          "tt": rng.standard_normal((2, D)), "nw": np.ones(D)}
    cs.append(case("embed-split-table-f16", [op("rms_norm", "x", "h", {"w": "nw"}, eps=1e-5)], ew, 7, D,
                   ["x", "h"], embed=[op("embed", "ids", "x", {"tokens": "tok", "positions": "pos",
                                                                "token_type": "tt"})],
                   ids=[0, 202, 57, 101, 100, 3, 150], vocab=V, max_binding=10000, dtype="f16", steps=2,
                   causal=True))
    # quantized blocks read in the kernels (SwiftShader has no shader-f16: u32 words only)
    qw = {"w": rng.standard_normal((135, 96)) * 0.2}
    for q in ("q4_1", "q8_0"):
        for v in ("row", "wg", "sg"):
            for T in (1, 5):
                cs.append(case(f"linear-{v}-{q}-T{T}", [op("linear", "x", "f", {"w": "w", "b": None})], qw, T,
                               96, ["f"], dtype=q, variants={"linear": v}))
        cs.append(case(f"embed-split-table-{q}", [], {"tok": rng.standard_normal((203, 64))}, 6, 64, ["x"],
                       embed=[op("embed", "ids", "x", {"tokens": "tok"})], ids=[0, 202, 57, 101, 3, 150],
                       vocab=203, max_binding=4096, dtype=q, causal=True))
    # the Q4_1 decode GEMV on int8 inputs (sgq2: where the page has subgroups and the WGSL language
    # feature packed_4x8_integer_dot_product, else sgb2 / wg) within its derived bound, and its
    # prefill fallback (T = 5: sgb2, exact)
    sw = {"w": rng.standard_normal((49, 576)) * 0.2}
    for T in (1, 5):
        c = case(f"linear-sgq2-q4_1-T{T}", [op("linear", "x", "f", {"w": "w", "b": None})], sw, T, 576, ["f"],
                 dtype="q4_1", variants={"linear": "sgq2"})
        if T == 1:
            c["tol"] = sgq_tol(c)
        cs.append(c)
    # its 16-byte form (sgqw2: runs of four blocks as 5 vec4, K % 128 == 0) where the page can
    # run sgq; 640 = 5 runs, fewer than a subgroup's lanes
    ww = {"w": rng.standard_normal((49, 640)) * 0.2}
    c = case("linear-sgqw2-q4_1-T1", [op("linear", "x", "f", {"w": "w", "b": None})], ww, 1, 640, ["f"],
             dtype="q4_1", variants={"linear": "sgqw2"})
    c["tol"] = sgq_tol(c)
    cs.append(c)
    fw = {"wg": rng.standard_normal((77, 64)) * 0.5, "wu": rng.standard_normal((77, 64)) * 0.5}
    cs.append(case("fused-gemv-wg-q4_1", mlp[:3], fw, 6, 64, ["m"], dtype="q4_1",
                   variants={"linear": "wg", "fuse": True}))
    z = (rng.standard_normal(1001) * 4).astype(np.float32)
    cs.append(sample_case("sample-argmax", z, SamplingParams(), 0))
    for i, sp in enumerate([SamplingParams(greedy=False, temperature=0.8, top_k=40, seed=5),
                            SamplingParams(greedy=False, temperature=1.0, top_p=0.5, seed=9)]):
        cs.append(sample_case(f"sample-seeded-{i}", z, sp, 3 + i))
    return cs


# ----------------------------------------------------------------------------- tests

def _numpy_generate(d, prompt, n, dtype="f32"):
    nb = NumpyBackend.load(d, dtype)
    c = nb.new_cache(len(prompt) + n + 8)
    sp = SamplingParams()
    return generate(lambda ids, k: sample_numpy(nb.forward(ids=ids, cache=c)[-1], sp, k), prompt, n).ids


def test_kernels_and_tiny_models_in_chromium(site, tiny_dir):
    data = Path(site["routes"]["/data"])
    (data / "cases.json").write_text(json.dumps(make_cases()))
    models, expected = [], {}
    prompt = [1, 5, 17, 33, 2, 99, 64]
    for arch in ("llama", "gpt2", "bert"):
        d, _ = tiny_dir(arch)
        shutil.copytree(d, data / f"tiny-{arch}", dirs_exist_ok=True)
        spec = {"name": f"tiny-{arch}", "url": f"{site['url']}/data/tiny-{arch}", "prompt": prompt,
                "new_tokens": 16, "variants": "auto" if arch == "llama" else None}
        models.append(spec)
        if arch == "bert":
            expected[spec["name"]] = NumpyBackend.load(d).forward(ids=prompt)[0]
        else:
            expected[spec["name"]] = _numpy_generate(d, prompt, 16)
    res, logs = run_page(site, {"cases": site["url"] + "/data/cases.json", "models": models})
    print(json.dumps({k: v for k, v in res.items() if k != "cases"}, indent=1, default=str)[:4000])
    bad = {k: v for k, v in res["cases"].items() if not v.get("ok")}
    for k, v in bad.items():
        print(k, v)
    assert not bad, list(bad)
    assert len(res["cases"]) == len(make_cases())
    assert "unresolved value 'nope'" in res["validation_error"]    # the WGSL message, as an exception
    # sgq2 ran its int8 kernel exactly where the page reports what it needs; prefill never does
    sgq = "packed_4x8_integer_dot_product" in res["features"] and "subgroups" in res["features"]
    print("features:", res["features"], "sgq cases:", {k: v for k, v in res["cases"].items() if "sgq" in k})
    assert res["cases"]["linear-sgq2-q4_1-T1"]["int8_dot"] == sgq
    assert not res["cases"]["linear-sgq2-q4_1-T5"]["int8_dot"]
    assert res["cases"]["linear-sgqw2-q4_1-T1"]["wide"] == sgq
    assert not res["cases"]["linear-sgq2-q4_1-T1"]["wide"]
    for m in res["models"]:
        assert "error" not in m, m
        assert m["variants"]["linear"] in ("row", "wg", "sg", "sg4", "sgw2", "wgw2")   # the autotune's candidates
        if m["name"] == "tiny-bert":
            g, r = np.asarray(m["embedding"]), expected[m["name"]]
            assert float(g @ r / np.linalg.norm(g) / np.linalg.norm(r)) >= 0.9999
        else:
            assert m["tokens"] == expected[m["name"]], m["name"]
            assert m["crossings_per_token"] <= 8          # O(1) in the number of layers


SMOL = Path(os.path.expanduser("~/.cache/pyapp/models/smollm2-135m"))


@pytest.mark.real_model
@pytest.mark.skipif(not (SMOL / "model.safetensors").exists(), reason="SmolLM2-135M not in the store")
def test_smollm2_greedy_in_chromium(site):
    data = Path(site["routes"]["/data"])
    link = data / "smollm2-135m"
    if not link.exists():
        link.mkdir()
        for f in ("config.json", "model.safetensors"):
            os.symlink(SMOL / f, link / f)
    # "The capital of France is" in SmolLM2's tokenizer; ids only (no tokenizer in this check)
    prompt = [504, 3575, 282, 4649, 314]
    n = int(os.environ.get("PYAPP_BROWSER_SMOL_TOKENS", "12"))
    ref = _numpy_generate(SMOL, prompt, n)
    # then again with each step-by-step token's pass cut into submits of 3, then 7 dispatches
    # (chunk boundaries inside layers); both runs must give transformers' greedy ids
    spec = {"name": "smollm2-135m", "url": f"{site['url']}/data/smollm2-135m", "prompt": prompt,
            "new_tokens": n, "variants": os.environ.get("PYAPP_BROWSER_VARIANTS", "auto"),
            "submit_chunks": [3, 7]}
    res, logs = run_page(site, {"models": [spec]}, timeout_s=1500)
    m = res["models"][0]
    print(json.dumps(m, indent=1, default=str))
    assert "error" not in m, m
    assert m["tokens"] == ref
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from test_real_models import torch_greedy
    tm = tf.AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    assert m["tokens_chunked"] == torch_greedy(tm, prompt, n) == ref
    assert m["submits_per_token_chunked"] > 10
    # the default run: each decode step's command buffer encoded while the step before ran, in
    # JS inside the same H.submit (no extra crossing), sent whole
    assert m["encode_ahead"] is True and m["submits_per_token"] == 1
    assert m["crossings_per_token_chunked"] == m["crossings_per_token"]   # chunks cut inside one JS call
