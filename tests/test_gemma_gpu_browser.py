"""Gemma 3's kernels in the browser: headless Chromium (SwiftShader WebGPU, Tint's WGSL compiler)
through the page and harness of tests/test_gpu_browser.py.  Each case's reference is computed
here: the numpy executor on the same float values, which for the block formats are gguf's
dequantization of the blocks uploaded raw (Q5_0 from gguf's quantize; Q4_K / Q6_K random bytes
with finite scales).  Relative error <= 1e-5 (the harness's bound).

Gemma 3 270M itself through `pyapp.generate` in the page: tests/test_gemma_browser.py (split 0),
tests/test_gemma_split_browser.py (splits 9, 18, progressive), tests/test_gemma_offline_site.py."""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pyapp.models import op
from test_gemma_gpu_kernels import deq, random_blocks
from test_gpu_browser import case, pytestmark, run_page, site  # noqa: F401  (fixture, marks)

pytest.importorskip("gguf")


def block_case(name, fmt, layer, rows, cols, T, check, variants, seed, embed=None, ids=None):
    """A case whose one weight `w` (or `tok`) is uploaded as raw `fmt` blocks."""
    raw = random_blocks(fmt, rows, cols, seed)
    wname = "tok" if embed else "w"
    c = case(name, layer, {wname: deq(fmt, raw)}, T, cols, check, variants=variants, embed=embed, ids=ids,
             vocab=rows if embed else 1, causal=bool(embed), max_binding=4096 if embed else None,
             widths=None if embed else {"f": rows})
    c["dtype"] = fmt
    c["weights"][wname]["data"] = base64.b64encode(raw.tobytes()).decode()
    return c


def gemma_cases():
    cs = []
    rng = np.random.default_rng(3)
    for fmt in ("q5_0", "q4_k", "q6_k"):
        K = 96 if fmt == "q5_0" else 512
        lin = [op("linear", "x", "f", {"w": "w", "b": None})]
        for v in ("row", "wg", "sg"):
            for T in (1, 5):
                cs.append(block_case(f"linear-{v}-{fmt}-T{T}", fmt, lin, 135, K, T, ["f"], {"linear": v}, T))
        cs.append(block_case(f"embed-split-table-{fmt}", fmt, [], 203, K, 6, ["x"], None, 7,
                             embed=[op("embed", "ids", "x", {"tokens": "tok"})], ids=[0, 202, 57, 101, 3, 150]))
    D, G = 48, 16
    ops = [op("scale", "x", "x", value=math.sqrt(640)),
           op("rms_norm", "x", "h", {"w": "nw"}, eps=1e-6, offset=1.0),
           op("rms_norm", "x", "q", {"w": "qw"}, eps=1e-6, offset=1.0, group=G),
           op("rms_norm", "q", "q", {"w": "qw"}, eps=1e-6, offset=1.0, group=G),
           op("gelu_tanh_mul", ("h", "q"), "m")]
    for wg in (1, 64):
        cs.append(case(f"gemma-norms-scale-geglu-wg{wg}", ops, {"nw": rng.standard_normal(D) * 0.3,
                                                                "qw": rng.standard_normal(G) * 0.3},
                       7, D, ["x", "h", "q", "m"], variants={"norm_wg": wg}, widths={"q": D, "m": D}))
    # the Gemma fusion rules (reduction variants): the (1 + w) norms folded into q/k and gate/up,
    # q_norm + k_norm in one dispatch, gate/up + gelu_tanh_mul as a weight pair, post-norm + add;
    # h, g, u and the normed o / d are never written (not checked)
    D, F, G = 48, 40, 16
    nrm = lambda a, y, w, **kw: op("rms_norm", a, y, {"w": w}, eps=1e-6, offset=1.0, **kw)  # noqa: E731
    lin = lambda a, y, w: op("linear", a, y, {"w": w, "b": None})  # noqa: E731
    ops = [nrm("x", "h", "n1"), lin("h", "q", "wq"), lin("h", "k", "wk"), nrm("q", "q", "qw", group=G),
           nrm("k", "k", "kw", group=G), lin("q", "o", "wo"), nrm("o", "o", "n2"), op("add", ("x", "o"), "x"),
           nrm("x", "h", "n3"), lin("h", "g", "wg"), lin("h", "u", "wu"), op("gelu_tanh_mul", ("g", "u"), "m"),
           lin("m", "d", "wd"), nrm("d", "d", "n4"), op("add", ("x", "d"), "x")]
    fw = {n: rng.standard_normal(s) * 0.3 for n, s in (("n1", D), ("n2", D), ("n3", D), ("n4", D), ("qw", G),
                                                        ("kw", G))}
    fw.update({n: rng.standard_normal(s) * s[1] ** -0.5 for n, s in (
        ("wq", (2 * G, D)), ("wk", (G, D)), ("wo", (D, 2 * G)), ("wg", (F, D)), ("wu", (F, D)), ("wd", (D, F)))})
    for v in ("wg", "sg"):
        for T in (1, 5):
            cs.append(case(f"gemma-fused-layer-{v}-T{T}", ops, fw, T, D, ["x", "q", "k", "m"],
                           variants={"linear": v, "norm_wg": 64},
                           widths={"q": 2 * G, "k": G, "o": D, "g": F, "u": F, "m": F, "d": D}))
    H, Hkv, hd, D = 4, 1, 8, 32
    aw = {"wq": rng.standard_normal((H * hd, D)) * 0.3, "wk": rng.standard_normal((Hkv * hd, D)) * 0.3,
          "wv": rng.standard_normal((Hkv * hd, D)) * 0.3}
    att = [op("linear", "x", "q", {"w": "wq", "b": None}), op("linear", "x", "k", {"w": "wk", "b": None}),
           op("linear", "x", "v", {"w": "wv", "b": None}),
           op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=1e6),
           op("attention", ("q", "k", "v"), "a", layer=0, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
              causal=True, scale=0.3, window=5)]
    for v in ("row", "wg"):    # 14 + 11 positions: past the 5 + 16-slot ring
        cs.append(case(f"sliding-window-ring-attention-{v}", att, aw, 14, D, ["a"], steps=12, causal=True,
                       n_heads=H, n_kv_heads=Hkv, head_dim=hd, variants={"attention": v}))
    return cs


def test_gemma_kernels_in_chromium(site):  # noqa: F811
    data = Path(site["routes"]["/data"])
    cases = gemma_cases()
    (data / "gemma_cases.json").write_text(json.dumps(cases))
    res, logs = run_page(site, {"cases": site["url"] + "/data/gemma_cases.json", "models": []})
    bad = {k: v for k, v in res["cases"].items() if not v.get("ok")}
    for k, v in bad.items():
        print(k, v)
    assert not bad, list(bad)
    assert len(res["cases"]) == len(cases)
