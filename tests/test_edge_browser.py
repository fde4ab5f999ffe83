"""The browser edge end to end: headless Chromium (SwiftShader WebGPU) against the real server
app on loopback.  One browser and one page for the whole module.

Run alone: ``python3 -m pytest tests/test_edge_browser.py -s`` (``-s`` prints the figures).
"""
from __future__ import annotations

import json
import math

import pytest

from test_edge_harness import (ARTIFACTS, LiveServer, have_chromium, have_models, launch,
                               numpy_embed, numpy_generate, open_page)

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not have_models("smollm2-135m", "minilm-l6"),
                                 reason="SmolLM2 / MiniLM not in the store")]

SMOL = "smollm2-135m"
MINI = "minilm-l6"


@pytest.fixture(scope="module")
def server():
    s = LiveServer(models=(SMOL, MINI), preload=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    logs = []
    with sync_playwright() as p:
        b = launch(p, webgpu=True)
        try:
            pg = open_page(b, server.url, logs)
            pg.logs = logs
            yield pg
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "edge-browser-console.log").write_text("\n".join(logs))
            b.close()


def py(page, code):
    """Run Python in the page; the code's last expression must be a JSON string."""
    return json.loads(page.evaluate("(code) => pyapp.runPython(code)", code))


def test_boot_from_the_site(page, server):
    boot = page.evaluate("() => pyapp.boot")
    assert boot["wheel"].startswith(server.url + "/wheels/pyapp-")
    assert boot["via"] in ("micropip", "unpackArchive")
    # nothing came from anywhere but this origin
    assert not [l for l in page.logs if "http" in l and server.url not in l and "://" in l
                and "net::" in l]
    print(f"\n[edge] boot {boot['totalMs'] / 1000:.1f} s (Pyodide {boot['pyodideMs'] / 1000:.1f} s, "
          f"wheel {boot['wheelMs'] / 1000:.1f} s, via {boot['via']})")


def test_tokenize_matches_cpython(page):
    from pyapp.cli import _model_dir, load_tokenizer
    tok = load_tokenizer(_model_dir(SMOL))
    for text in ("Hello world", "Ünïcödé and 12345 numbers"):
        assert page.evaluate("(t) => pyapp.tokenize(t, {model: 'smollm2-135m'})", text) == tok.encode(text).ids


def test_python_in_the_page_has_the_same_api(page):
    r = py(page, "import json, pyapp\njson.dumps(await pyapp.tokenize('Hello', model='smollm2-135m'))")
    assert r == page.evaluate("() => pyapp.tokenize('Hello', {model: 'smollm2-135m'})")
    names = py(page, "import json, inspect, pyapp\njson.dumps({n: inspect.iscoroutinefunction(getattr(pyapp, n)) "
                     "for n in ('generate', 'embed', 'tokenize', 'run_python')})")
    assert names == {"generate": True, "embed": True, "tokenize": True, "run_python": True}


def test_stream_all_tail_weights_wasm_heap_flat(page):
    """Split 0: every SmolLM2 weight the edge needs, streamed into GPU buffers; the wasm heap
    must grow by < 1% of the bytes moved.  Both upload paths are measured."""
    res = {}
    for mode in ("mapped", "writeBuffer"):
        r = py(page, f"import json, pyapp.edge.stream as s\njson.dumps(await s.bench('{SMOL}', 0, '{mode}'))")
        res[mode] = r
        growth = r["wasm_heap_growth"]
        print(f"\n[edge] {mode}: {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.2f} s = {r['mb_per_s']:.1f} MB/s; "
              f"plain fetch of the same bytes {r['plain_fetch_seconds']:.2f} s; upload {r['upload_ms']:.0f} ms; "
              f"wasm heap {r['wasm_heap_before'] / 1e6:.1f} -> {r['wasm_heap_after'] / 1e6:.1f} MB "
              f"(growth {growth} B = {100 * growth / r['bytes']:.4f}% of streamed); "
              f"peak JS heap {r['peak_js_heap'] / 1e6:.0f} MB; {r['requests']} requests")
        per = [c["mb_per_s"] for c in r["chunks"]]
        print(f"[edge] per-chunk MB/s: min {min(per):.1f} median {sorted(per)[len(per) // 2]:.1f} max {max(per):.1f}")
        assert r["bytes"] > 500e6
        assert growth < 0.01 * r["bytes"]
        assert all(c["verified"] for c in r["chunks"])
        assert r["refetches"] == 0
        # exactly the needed chunks: 30 layers + head (the tied embedding streams once)
        assert sorted(c["id"] for c in r["chunks"]) == sorted([f"layer.{i}" for i in range(30)] + ["head"])
    (ARTIFACTS / "edge-stream.json").write_text(json.dumps(res, indent=1))


def _stream_layer(page, layer, mode="mapped"):
    return py(page, f"""
import json, pyapp.edge.stream as s
m = await s.load_manifest('{SMOL}')
chunks = [c for c in m['chunks'] if c['id'] == 'layer.{layer}']
dev = await s.raw_device()
sink = s.GpuBufferSink(dev, '{mode}')
st = await s.stream_chunks(m, chunks, sink)
sink.destroy()
json.dumps(st.as_dict())""")


def _chunk(server, cid):
    import httpx
    m = httpx.get(server.url + f"/models/{SMOL}/manifest.json").json()
    return next(c for c in m["chunks"] if c["id"] == cid)


def test_corrupted_byte_is_detected_and_refetched(page, server):
    c = _chunk(server, "layer.3")
    server.faults.add("corrupt", "/models/" + SMOL, range_start=c["ranges"][0][0], at=123_457)
    r = _stream_layer(page, 3)
    assert server.faults.fired and server.faults.fired[-1]["kind"] == "corrupt"
    assert r["refetches"] == 1, r
    assert r["chunks"][0]["verified"]
    print(f"\n[edge] corrupted byte: detected by sha256, refetched ({r['requests']} requests)")


def test_connection_cut_mid_layer_resumes(page, server):
    c = _chunk(server, "layer.5")
    server.faults.add("cut", "/models/" + SMOL, range_start=c["ranges"][0][0], after=5_000_000)
    r = _stream_layer(page, 5)
    fired = server.faults.fired[-1]
    assert fired["kind"] == "cut"
    assert r["resumes"] + r["errors"] >= 1, r
    assert r["refetches"] == 0          # resumed from the missing byte, not refetched whole
    assert r["requests"] == 2
    assert r["chunks"][0]["verified"]
    print(f"\n[edge] cut after 5 MB of 14.2 MB: resumed with a second Range request "
          f"({r['resumes']} resumes, {r['errors']} errors)")


# --------------------------------------------------------------------------- split generation

PROMPT = "The capital of France is"
CHAT = "What is 2+2?"


@pytest.fixture(scope="module")
def references():
    return {("raw", 32): numpy_generate(SMOL, PROMPT, 32),
            ("chat", 32): numpy_generate(SMOL, CHAT, 32, chat=True)}


def test_default_split_from_adapter_and_kernel_timing(page):
    """The page's default split: from the adapter (SwiftShader is a CPU fallback) and a quick
    GEMV timing on the device; the slider shows it and the reason."""
    d = page.evaluate("() => pyapp.defaultSplit('smollm2-135m')")
    ad = page.evaluate("() => pyapp.adapter()")
    assert ad["available"] and ad["is_cpu"], ad
    assert d["split"] == 30 and "GFLOP/s" in d["reason"], d
    page.wait_for_function("() => document.getElementById('split-why').textContent.length > 0")
    assert page.eval_on_selector("#split", "e => Number(e.value)") == d["split"]
    assert page.inner_text("#split-why") == d["reason"]
    print(f"\n[edge] default split {d['split']}: {d['reason']}")


def test_stop_then_a_second_generate_on_the_same_session(page, references):
    """Stop after 4 tokens (both KV caches stop in step), then the same runner and server
    session generate again from a reset: the ids are numpy's from the start."""
    pids, ids = references[("raw", 32)]
    r = page.evaluate("(p) => { let n = 0; return pyapp.generate(p, {model: 'smollm2-135m', greedy: true, "
                      "maxNewTokens: 32, split: 30, onToken: () => { if (++n === 4) pyapp.stop(); }}); }", PROMPT)
    assert r["stats"]["finish_reason"] == "cancelled", r["stats"]
    assert 4 <= len(r["ids"]) < 32 and r["ids"] == ids[:len(r["ids"])]
    sid = py(page, "import json\nfrom pyapp.edge.api import state\n"
                   "json.dumps(state.runners[('smollm2-135m', 30)].server.id)")
    r2 = page.evaluate("(p) => pyapp.generate(p, {model: 'smollm2-135m', greedy: true, maxNewTokens: 8, split: 30})",
                       PROMPT)
    assert r2["stats"]["finish_reason"] == "length"
    assert r2["ids"] == ids[:8]
    assert sid == py(page, "import json\nfrom pyapp.edge.api import state\n"
                           "json.dumps(state.runners[('smollm2-135m', 30)].server.id)")   # same session
    # seeded sampling (temperature, top-p) on the GPU is reproducible
    opts = "{model: 'smollm2-135m', greedy: false, temperature: 0.8, topP: 0.9, seed: 7, maxNewTokens: 6, split: 30}"
    a = page.evaluate(f"(p) => pyapp.generate(p, {opts})", PROMPT)
    b = page.evaluate(f"(p) => pyapp.generate(p, {opts})", PROMPT)
    assert a["ids"] == b["ids"] and len(a["ids"]) == 6
    print(f"\n[edge] stopped after {len(r['ids'])} tokens; second generate on session {sid[:8]}.. "
          f"= numpy's first 8; seeded sample {a['text']!r}")


@pytest.mark.parametrize("split", [30, 15, 0])
def test_split_generation_matches_numpy(page, references, split):
    for kind, prompt, chat in (("raw", PROMPT, False), ("chat", CHAT, True)):
        pids, ids = references[(kind, 32)]
        mx = 32
        r = page.evaluate("([p, k, chat, mx]) => pyapp.generate(p, {model: 'smollm2-135m', greedy: true, "
                          "maxNewTokens: mx, split: k, chat})", [prompt, split, chat, mx])
        s = r["stats"]
        print(f"\n[edge] split {split} {kind}: ttft {s['time_to_first_token'] * 1000:.0f} ms, "
              f"{s['tokens_per_second']:.2f} tok/s, load {s['load_seconds']:.1f} s, "
              f"{s['weight_bytes'] / 1e6:.0f} MB, FFI/token {s['ffi_crossings_per_token']} "
              f"{s['ffi_per_token']}, GPU memory {s['gpu_bytes'] / 1e6:.0f} MB")
        assert r["promptIds"] == pids
        assert r["ids"] == ids, (kind, split, r["text"])
        assert s["backend"] == "webgpu" and s["split"] == split
        if split == 0 and kind == "raw":
            # the real load path (GpuBackend.write_weight): every tail weight, heap flat
            ld = s["load"]
            print(f"[edge] split 0 load into GpuBackend: {ld['bytes'] / 1e6:.1f} MB, wasm heap growth "
                  f"{ld['wasm_heap_growth']} B = {100 * ld['wasm_heap_growth'] / ld['bytes']:.4f}% of streamed")
            assert ld["bytes"] > 500e6 and ld["wasm_heap_growth"] < 0.01 * ld["bytes"]


def test_screenshot_mid_generation(page):
    """The page mid-generation at split 24 (six layers streamed, so the bars are fresh), desktop
    1280 and phone 390 wide; then the Stop button ends it."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.fill("#prompt", "Write a haiku about the sea.")
    page.evaluate("() => { const s = document.getElementById('split'); s.value = 24; "
                  "s.dispatchEvent(new Event('input')); document.getElementById('maxnew').value = 64; }")
    page.click("#go")
    page.wait_for_function("() => document.getElementById('out').textContent.length > 60", timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "edge-page.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "edge-page-phone.png"), full_page=True)
    assert page.eval_on_selector("#stop", "e => !e.disabled")          # still generating
    bars = page.eval_on_selector_all("#bars .bar.done", "es => es.length")
    assert bars == 7, bars                                                # layers 24..29 + head
    page.click("#stop")
    page.wait_for_function("() => !document.getElementById('go').disabled", timeout=120_000)
    assert "cancelled" in page.inner_text("#status")
    assert page.inner_text("#s-tps") not in ("", "–")
    page.set_viewport_size({"width": 1400, "height": 1000})
    for f in ("edge-page.png", "edge-page-phone.png"):
        assert (ARTIFACTS / f).stat().st_size > 10_000


@pytest.mark.parametrize("split", [0, 3])
def test_minilm_embeddings_match_numpy(page, split):
    texts = ["A cat sits on the mat.", "The stock market fell sharply today."]
    want = numpy_embed(MINI, texts)
    got = page.evaluate("([t, k]) => pyapp.embed(t, {model: 'minilm-l6', split: k})", [texts, split])
    for a, b in zip(got, want):
        cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        assert cos >= 0.9999, cos
    print(f"\n[edge] MiniLM split {split}: cosine vs numpy "
          + ", ".join(f"{sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)):.7f}"
                      for a, b in zip(got, want)))


def test_embeddings_panel(page):
    page.click("#embed-go")
    page.wait_for_function("() => document.querySelectorAll('#sim td').length === 9", timeout=120_000)
    cells = [float(t) for t in page.eval_on_selector_all("#sim td", "es => es.map(e => e.textContent)")]
    assert all(abs(cells[i * 4] - 1) < 1e-3 for i in range(3))
    assert cells[1] > cells[2]          # cat/kitten closer than cat/stock market
