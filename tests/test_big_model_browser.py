"""Past wasm32: a Llama of more than 4 GiB of f32 weights streams into headless Chromium
(SwiftShader WebGPU) from `pyapp serve` on loopback and generates.

`pyapp synth` writes the model (24 layers, hidden 2048, FFN 5632, 32 heads / 4 KV heads,
SmolLM2's tokenizer and vocabulary: 4.63 GB) into a private store.  The reference is the numpy
executor on the same weights (memory-mapped: the test process does not hold 4.6 GB).

* split 0 on a device opened with WebGPU's default limits (128 MiB bindings): the 402 MB tied
  embedding / LM head is sharded over 3+ bindings; greedy 4 new tokens equal numpy's;
  stats.weight_bytes > 4 GiB; wasm heap growth < 1 % of it; peak JS heap under 256 MB + one
  piece (16 MiB); no JS buffer over one piece.
* a fresh page: pyapp.stop() during a split-0 load ends it with code 'cancelled' and destroys
  the backend it was filling; a GPU memory budget of 2 GB refuses split 0 before any weight byte
  is fetched, naming the lowest split that fits; split 20 (the server holds layers 0..19) gives
  the same ids.

Heavy (about 5 GB of GPU memory in the browser, 4 GB in the server at split 20): marked
`big_model`, runs alone (pytest runs serially), the page is closed between cases and the model
deleted at the end.  Run: ``python3 -m pytest tests/test_big_model_browser.py -s``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from test_edge_harness import ARTIFACTS, LiveServer, have_chromium, webgpu_browser

SMOLLM2 = Path.home() / ".cache" / "pyapp" / "models" / "smollm2-135m"
pytestmark = [pytest.mark.browser, pytest.mark.real_model, pytest.mark.big_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="no SmolLM2 tokenizer")]

NAME = "big-llama"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 32,
          "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 49152,
          "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}
PROMPT = "The capital of France is"
NEW = 4
PIECE = 16 << 20
JS_HEAP_BOUND = (256 << 20) + PIECE
T0 = time.time()


def mark(what):
    print(f"[big] {time.time() - T0:6.1f} s  {what}", flush=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The synthesized model in a private store (deleted at the end)."""
    from pyapp.synth import synth

    root = tmp_path_factory.mktemp("big")
    old = os.environ.get("PYAPP_MODELS_DIR")
    os.environ["PYAPP_MODELS_DIR"] = str(root / "store")
    (root / "config.json").write_text(json.dumps(CONFIG))
    path = synth(NAME, root / "config.json", tokenizer_from=str(SMOLLM2), seed=5)
    mark(f"synth: {(path / 'model.safetensors').stat().st_size / 1e9:.2f} GB")
    try:
        yield path
    finally:
        shutil.rmtree(root / "store", ignore_errors=True)
        if old is None:
            os.environ.pop("PYAPP_MODELS_DIR", None)
        else:
            os.environ["PYAPP_MODELS_DIR"] = old


@pytest.fixture(scope="module")
def reference(big):
    """(prompt ids, greedy ids) of the numpy executor over memory-mapped weights."""
    from pyapp.numpy_backend import NumpyBackend
    from pyapp.tokenizer import Tokenizer
    from pyapp.weightfile import load_model_dir, read_safetensors_header

    f = big / "model.safetensors"
    header, data0 = read_safetensors_header(f)
    mm = np.memmap(f, dtype=np.uint8, mode="r")
    w = {n: mm[data0 + h["data_offsets"][0]:data0 + h["data_offsets"][1]].view("<f4").reshape(h["shape"])
         for n, h in header.items()}
    nb = NumpyBackend(load_model_dir(big), w)
    ids = Tokenizer.from_pretrained(str(big)).encode(PROMPT).ids
    cache, out, x = nb.new_cache(64), [], ids
    for _ in range(NEW):
        out.append(int(nb.forward(ids=x, cache=cache)[-1].argmax()))
        x = [out[-1]]
    mark(f"numpy reference: {out}")
    del nb, w, mm
    return ids, out


@pytest.fixture(scope="module")
def server(big):
    s = LiveServer(models=(NAME,), preload=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    yield from webgpu_browser()


def open_page(browser, url, query, logs):
    page = browser.new_page()
    page.set_default_timeout(600_000)
    page.on("console", lambda m: logs.append(f"[{m.type}] {m.text}"))
    page.goto(f"{url}/?nosw=1{query}")
    page.wait_for_function("() => window.pyapp && window.pyapp.ready")
    page.evaluate("() => pyapp.ready")
    return page


def generate(page, split, **extra):
    extra.setdefault("progressive", False)       # the direct load: the server runs no layer meanwhile
    return page.evaluate("([p, o]) => pyapp.generate(p, o).then(r => r, e => ({error: e.message, code: e.code}))",
                         [PROMPT, dict(model=NAME, greedy=True, maxNewTokens=NEW, split=split, **extra)])


def py(page, code):
    return json.loads(page.evaluate("(c) => pyapp.runPython(c)", code))


def test_split_0_over_4_gib_default_limits(big, reference, server, browser):
    logs = []
    page = open_page(browser, server.url, "&gpulimits=default", logs)
    try:
        mark("page ready (WebGPU default limits)")
        r = generate(page, 0)
        assert "error" not in r, r
        st, load = r["stats"], r["stats"]["load"]
        mark(f"split 0: {st['weight_bytes'] / 1e9:.2f} GB in {st['load_seconds']:.1f} s "
             f"({load['mb_per_s']:.0f} MB/s), ids {r['ids']}")
        limits = py(page, "import json, pyapp.edge.api as a\nr = next(iter(a.state.runners.values()))\n"
                          "json.dumps({'limit': a.state.device.limits['max_storage_binding'], 'chunks': "
                          "len(r.backend.tensors['model.embed_tokens.weight'].chunks)})")
        growth = load["wasm_heap_growth"]
        print(f"[big] wasm heap {load['wasm_heap_before'] / 1e6:.1f} -> {load['wasm_heap_after'] / 1e6:.1f} MB "
              f"(growth {growth} B = {100 * growth / st['weight_bytes']:.4f} % of streamed); peak JS heap "
              f"{load['peak_js_heap'] / 1e6:.0f} MB (bound {JS_HEAP_BOUND / 1e6:.0f} MB); largest JS buffer "
              f"{load['largest_buffer'] / 1e6:.1f} MB; GPU {st['gpu_bytes'] / 1e9:.2f} GB; binding limit "
              f"{limits['limit'] / 2 ** 20:.0f} MiB, embedding in {limits['chunks']} shards; "
              f"{load['requests']} requests; decode {st['tokens_per_second']:.2f} tok/s")
        assert r["promptIds"] == reference[0] and r["ids"] == reference[1]
        assert st["weight_bytes"] > 4 * 2 ** 30
        assert limits["limit"] == 128 << 20 and limits["chunks"] >= 3
        assert growth < 0.01 * st["weight_bytes"]
        assert load["largest_buffer"] <= PIECE
        assert 0 < load["peak_js_heap"] < JS_HEAP_BOUND
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "big-model-split0.json").write_text(json.dumps(r["stats"], indent=1))
    finally:
        page.close()


def expected_fit(big, budget):
    """The lowest split whose weights + KV cache fit `budget`, from the safetensors header."""
    from pyapp.weightfile import read_safetensors_header
    header, _ = read_safetensors_header(big / "model.safetensors")
    size = lambda h: h["data_offsets"][1] - h["data_offsets"][0]  # noqa: E731
    L = CONFIG["num_hidden_layers"]
    layer = [sum(size(h) for n, h in header.items() if n.startswith(f"model.layers.{i}.")) for i in range(L)]
    head = size(header["model.embed_tokens.weight"]) + size(header["model.norm.weight"])
    kv = 2 * CONFIG["num_key_value_heads"] * CONFIG["head_dim"] * 4 * 2048
    return next(k for k in range(L + 1) if head + sum(layer[k:]) + (L - k) * kv <= budget)


def cancel_during_load(page):
    """pyapp.stop() once the first piece is in: the load ends with code 'cancelled' and the
    backend it was filling is destroyed (its buffers freed: recorded by wrapping destroy)."""
    py(page, "import json, pyapp.gpu.backend as B\nB.destroyed = []\norig = B.GpuBackend.destroy\n"
             "def spy(self):\n    B.destroyed.append(sum(c[4] for t in self.tensors.values() for c in t.chunks))\n"
             "    orig(self)\nB.GpuBackend.destroy = spy\njson.dumps(True)")
    r = page.evaluate("""async ([p, m]) => {
        const run = pyapp.generate(p, {model: m, greedy: true, maxNewTokens: 1, split: 0, progressive: false})
          .then(r => ({ids: r.ids}), e => ({error: e.message, code: e.code}));
        await new Promise(res => addEventListener('pyapp:progress', res, {once: true}));
        pyapp.stop();
        return await run; }""", [PROMPT, NAME])
    freed = py(page, "import json, pyapp.gpu.backend as B\njson.dumps(B.destroyed)")
    resident = page.evaluate("() => pyapp.stats().resident")
    return r, freed, resident


def test_refused_before_fetch_then_split_20(big, reference, server, browser):
    logs = []
    page = open_page(browser, server.url, "", logs)
    try:
        r, freed, resident = cancel_during_load(page)
        mark(f"cancelled: {r}; destroyed backends holding {[f / 1e9 for f in freed]} GB of weight buffers")
        assert r.get("code") == "cancelled" and not resident
        assert len(freed) == 1 and freed[0] > 4 * 2 ** 30
        before = len(server.faults.seen)
        r = generate(page, 0, gpuMemory=2e9, progressive=True)     # the progressive loader checks too
        weights = [p for p, _rng, _n in server.faults.seen[before:] if p.endswith(".safetensors")]
        assert r.get("code") == "too_big" and not weights, (r, weights)
        k = int(re.search(r"split (\d+) or higher fits", r["error"]).group(1))
        assert k == expected_fit(big, 2e9), r["error"]
        mark(f"refused: {r['error']}")
        r = generate(page, 20)
        assert "error" not in r, r
        st = r["stats"]
        mark(f"split 20: {st['weight_bytes'] / 1e9:.2f} GB streamed, ids {r['ids']}")
        assert r["ids"] == reference[1]
        assert st["load"]["largest_buffer"] <= PIECE
    finally:
        page.close()
