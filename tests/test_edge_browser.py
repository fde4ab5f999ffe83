"""The browser edge end to end: headless Chromium (SwiftShader WebGPU) against the real server
app on loopback.  One browser and one page for the whole module.

Run alone: ``python3 -m pytest tests/test_edge_browser.py -s`` (``-s`` prints the figures).
"""
from __future__ import annotations

import json
import time

import pytest

from test_edge_harness import (ARTIFACTS, LiveServer, cosine, have_chromium, have_models, launch,
                               numpy_generate, open_page, st_embed)

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


def test_page_state_is_current(page):
    """After boot the status says ready (not a stale 'reading the manifest'); greedy disables
    temperature/top-p; the hint under the slider describes the chosen split."""
    page.wait_for_function("() => document.getElementById('status').textContent === 'ready'")
    assert page.eval_on_selector("#temperature", "e => e.disabled") and page.eval_on_selector("#topp", "e => e.disabled")
    page.click("#greedy")
    assert not page.eval_on_selector("#temperature", "e => e.disabled")
    page.click("#greedy")
    models = [o for o in page.eval_on_selector_all("#model option", "es => es.map(e => e.value)")]
    assert models == ["smollm2-135m"]                    # text-generation models from /v1/models
    assert page.inner_text("#embed-model").startswith("minilm-l6")
    default = page.eval_on_selector("#split", "e => Number(e.value)")
    page.evaluate("() => { const s = document.getElementById('split'); s.value = 10; s.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#split-why") == (f"split 10: layers 0..9 on the server, 10..29 and the head on this GPU "
                                              f"(default {default})")
    page.evaluate(f"() => {{ const s = document.getElementById('split'); s.value = {default}; s.dispatchEvent(new Event('input')); }}")
    assert "GFLOP/s" in page.inner_text("#split-why")


def test_tokenize_matches_cpython(page):
    from pyapp.cli import _model_dir, load_tokenizer
    tok = load_tokenizer(_model_dir(SMOL))
    for text in ("Hello world", "Ünïcödé and 12345 numbers"):
        assert page.evaluate("(t) => pyapp.tokenize(t, {model: 'smollm2-135m'})", text) == tok.encode(text).ids


def test_python_in_the_page_has_the_same_api(page):
    r = py(page, "import json, pyapp\njson.dumps(await pyapp.tokenize('Hello', model='smollm2-135m'))")
    assert r == page.evaluate("() => pyapp.tokenize('Hello', {model: 'smollm2-135m'})")
    names = py(page, "import json, inspect, pyapp\njson.dumps({n: inspect.iscoroutinefunction(getattr(pyapp, n)) "
                     "for n in ('generate', 'embed', 'tokenize', 'run_python', 'default_split', 'adapter', 'list_models')})")
    assert set(names.values()) == {True}, names
    # the same answers as the JS side
    assert py(page, "import json, pyapp\njson.dumps(await pyapp.adapter())") == page.evaluate("() => pyapp.adapter()")
    assert py(page, "import json, pyapp\njson.dumps(await pyapp.list_models())") == page.evaluate("() => pyapp.models()")
    assert py(page, "import json, pyapp\njson.dumps(callable(pyapp.save_offline))")


def test_stream_all_tail_weights_wasm_heap_flat(page):
    """Split 0: every SmolLM2 weight the edge needs, streamed into GPU buffers; the wasm heap
    must grow by < 1% of the bytes moved.  Both upload paths are measured."""
    res = {}
    for mode in ("mapped", "writeBuffer"):
        r = py(page, f"import json, pyapp.edge.measure as s\njson.dumps(await s.bench('{SMOL}', 0, '{mode}'))")
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


def test_every_weight_byte_crosses_the_wire_once(page, server):
    """Every SmolLM2 q4_1 weight (all in one file, fetched 3 ranges at a time): the server's own
    log of model-file requests (its middleware counts the body bytes it sent) holds exactly the
    page's fetches and the weight bytes once. Through the browser's HTTP cache, Chromium restarted
    concurrent Range requests on the one URL: 1.14-1.52x the bytes (benchmarks/bench_wire.py)."""
    server.faults.seen.clear()
    r = py(page, f"""
import json, pyapp.edge.stream as s, pyapp.edge.measure as ms
m = await s.fetch_json(s.absolute_url('', '/models/{SMOL}/manifest.json?dtype=q4_1'))
sink = ms.GpuBufferSink(await ms.raw_device())
st = await s.stream_chunks(m, m['chunks'], sink)
sink.destroy()
json.dumps(dict(st.as_dict(), shared=sorted(s.shared_files(m['chunks']))))""")
    wire = [(rng, n) for path, rng, n in server.faults.seen if rng]
    print(f"\n[edge] q4_1: {r['bytes'] / 1e6:.1f} MB in {r['requests']} fetches; on the wire {len(wire)} "
          f"requests, {sum(n for _, n in wire) / 1e6:.1f} MB")
    assert r["bytes"] > 100e6 and r["shared"] == ["model.q4_1.safetensors"], r["shared"]
    assert len(wire) == r["requests"] and len({rng for rng, _ in wire}) == len(wire), wire
    assert sum(n for _, n in wire) == r["bytes"]


def _stream_layer(page, layer, mode="mapped", opts=None):
    return py(page, f"""
import json, pyapp.edge.stream as s, pyapp.edge.measure as ms
m = await s.load_manifest('{SMOL}')
chunks = [c for c in m['chunks'] if c['id'] == 'layer.{layer}']
dev = await ms.raw_device()
sink = ms.GpuBufferSink(dev, '{mode}')
st = await s.stream_chunks(m, chunks, sink, opts={opts!r})
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


def test_stalled_weight_response_fails_within_the_timeout(page, server):
    """The server sends 1 MB of a layer and then nothing: with a 2 s stall limit and one retry
    (which stalls too) the load fails in about 2 x 2 s with one sentence, code 'timeout'."""
    c = _chunk(server, "layer.7")
    server.faults.add("stall", ".safetensors", after=1_000_000, count=2, hold=8.0)
    t0 = time.time()
    err = page.evaluate("""async () => { try {
        await pyapp.runPython(`import pyapp.edge.stream as s, pyapp.edge.measure as ms
m = await s.load_manifest('smollm2-135m')
sink = ms.GpuBufferSink(await ms.raw_device())
await s.stream_chunks(m, [c for c in m['chunks'] if c['id'] == 'layer.7'], sink, opts={'stallMs': 2000, 'maxTries': 1})`);
        return null; } catch (e) { return e.message; } }""")
    took = time.time() - t0
    assert c and err is not None and "stalled: no bytes for 2 s" in err, err
    assert took < 15, took
    print(f"\n[edge] stalled layer: failed after {took:.1f} s: {err.strip().splitlines()[-1]}")


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


# the server session of the page's runner for SmolLM2 at split 30 (whatever format it chose)
RUNNER_SESSION = ("import json\nfrom pyapp.edge.api import state\n"
                  "json.dumps([r.server.id for (m, _f, k), r in state.runners.items()"
                  " if m == 'smollm2-135m' and k == 30][0])")


def test_stop_then_a_second_generate_on_the_same_session(page, references):
    """Stop after 4 tokens (both KV caches stop in step), then the same runner and server
    session generate again from a reset: the ids are numpy's from the start."""
    pids, ids = references[("raw", 32)]
    r = page.evaluate("(p) => { let n = 0; return pyapp.generate(p, {model: 'smollm2-135m', greedy: true, "
                      "maxNewTokens: 32, split: 30, onToken: () => { if (++n === 4) pyapp.stop(); }}); }", PROMPT)
    assert r["stats"]["finish_reason"] == "cancelled", r["stats"]
    assert 4 <= len(r["ids"]) < 32 and r["ids"] == ids[:len(r["ids"])]
    sid = py(page, RUNNER_SESSION)
    r2 = page.evaluate("(p) => pyapp.generate(p, {model: 'smollm2-135m', greedy: true, maxNewTokens: 8, split: 30})",
                       PROMPT)
    assert r2["stats"]["finish_reason"] == "length"
    assert r2["ids"] == ids[:8]
    assert r2["stats"]["weight_bytes"] == 0          # the tail stayed on the GPU
    assert sid == py(page, RUNNER_SESSION)   # same session
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
        # f32 weights: the numpy references run the f32 file (q4_1 is tests/test_edge_formats.py)
        r = page.evaluate("([p, k, chat, mx]) => pyapp.generate(p, {model: 'smollm2-135m', greedy: true, "
                          "maxNewTokens: mx, split: k, chat, format: 'f32'})", [prompt, split, chat, mx])
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


def test_split0_pipelined_stop_then_generate_and_seeded(page, references):
    """At split 0 with the tail loaded (not progressive) every layer and the sampler are on this
    GPU, so generate runs pipelined (steps submitted before the previous token is read). stop()
    after 4 tokens cuts the steps run ahead; the next generate gives numpy's ids. Seeded sampling
    gives the same ids as with the step loop forced (pipeline: false): the same GPU sampler, so a
    consistency check (test_split_generation_matches_numpy is the reference check)."""
    pids, ids = references[("raw", 32)]
    base = "model: 'smollm2-135m', split: 0, format: 'f32', progressive: false"
    r = page.evaluate("(p) => { let n = 0; return pyapp.generate(p, {%s, greedy: true, maxNewTokens: 32, "
                      "onToken: () => { if (++n === 4) pyapp.stop(); }}); }" % base, PROMPT)
    assert r["stats"]["pipelined"] and r["stats"]["finish_reason"] == "cancelled", r["stats"]
    assert 4 <= len(r["ids"]) < 32 and r["ids"] == ids[:len(r["ids"])]
    r2 = page.evaluate("(p) => pyapp.generate(p, {%s, greedy: true, maxNewTokens: 12})" % base, PROMPT)
    assert r2["stats"]["pipelined"] and r2["stats"]["finish_reason"] == "length"
    assert r2["ids"] == ids[:12]
    opts = base + ", greedy: false, temperature: 0.8, topP: 0.9, topK: 40, seed: 7, maxNewTokens: 10"
    a = page.evaluate("(p) => pyapp.generate(p, {%s})" % opts, PROMPT)
    b = page.evaluate("(p) => pyapp.generate(p, {%s, pipeline: false})" % opts, PROMPT)
    assert a["stats"]["pipelined"] and not b["stats"]["pipelined"]
    assert a["ids"] == b["ids"] and len(a["ids"]) == 10
    print(f"\n[edge] split 0 pipelined: stopped after {len(r['ids'])} tokens, "
          f"{r2['stats']['tokens_per_second']:.2f} tok/s pipelined vs {b['stats']['tokens_per_second']:.2f} "
          f"step loop (sampled), seeded {a['text']!r}")


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


PARAGRAPH = " ".join(
    "Lighthouse keepers once logged every passing ship by hand, noting the weather, the hour and the "
    "colour of the sails; their ledgers, kept for two centuries along a rocky northern coast, now let "
    "historians trace storms, trade routes and even the arrival of steam, one careful line at a time"
    .split()[:50] * 4)                      # 200 words, about 250 tokens
ODD = ["東京の夜は静かで、雨が降っている。", "Umbrella", PARAGRAPH]
MIXED = ODD + [" ".join(("orbit velvet harbor signal meadow copper lantern quietly " * 6).split()[i % 7:i % 7 + 2 + (i * 5) % 38])
               + "." for i in range(29)]   # 32 texts, 1..250 tokens


@pytest.fixture(scope="module")
def st_reference():
    return dict(zip(MIXED, st_embed(MINI, MIXED)))


@pytest.mark.parametrize("split", [0, 3, 6])
def test_minilm_embeddings_match_sentence_transformers(page, st_reference, split):
    """pyapp.embed in the page against sentence-transformers (PyTorch) on the raw text: a batch of
    32 of mixed lengths (CJK, one word, a 200-word paragraph) in one call, and texts one at a time."""
    t0 = time.time()
    got = page.evaluate("([t, k]) => pyapp.embed(t, {model: 'minilm-l6', split: k})", [MIXED, split])
    batch_s = time.time() - t0
    cos = [cosine(g, st_reference[t]) for g, t in zip(got, MIXED)]
    singles = ODD[:2] + MIXED[5:6]
    one = [page.evaluate("([t, k]) => pyapp.embed(t, {model: 'minilm-l6', split: k})", [t, split])[0] for t in singles]
    cos1 = [cosine(g, st_reference[t]) for g, t in zip(one, singles)]
    print(f"\n[edge] MiniLM split {split}: batch of 32 in {batch_s:.1f} s; cosine vs sentence-transformers "
          f"min {min(cos):.7f} = 1 - {1 - min(cos):.1e} (CJK 1 - {1 - cos[0]:.1e}, one word 1 - {1 - cos[1]:.1e}, "
          f"paragraph 1 - {1 - cos[2]:.1e}); one at a time min 1 - {1 - min(cos1):.1e}")
    assert min(cos) >= 0.9999 and min(cos1) >= 0.9999, (cos, cos1)


def test_edge_tokenizer_is_the_cpython_one_without_padding_or_truncation(page):
    """The edge's MiniLM ids equal the Rust `tokenizers` package's with tokenizer.json's padding
    and truncation (128) off: a 250-token paragraph keeps every token, a word gets no padding."""
    from pathlib import Path

    from tokenizers import Tokenizer as RustTokenizer

    from pyapp.store import model_path
    ref = RustTokenizer.from_file(str(Path(model_path(MINI)) / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    for t in ODD:
        assert page.evaluate("(t) => pyapp.tokenize(t, {model: 'minilm-l6'})", t) == ref.encode(t).ids
    assert len(ref.encode(PARAGRAPH).ids) > 200


def test_server_embeddings_refuse_past_context_and_do_not_cut(server, st_reference):
    """The server, like the edge: a text past the context is a 400 naming it, one under it is
    embedded whole (not cut at tokenizer.json's 128)."""
    import httpx
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MINI, "input": ["word " * 600]}, timeout=60)
    assert r.status_code == 400 and "512" in r.json()["error"]["message"], r.text
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MINI, "input": [PARAGRAPH]}, timeout=60)
    assert cosine(r.json()["data"][0]["embedding"], st_reference[PARAGRAPH]) >= 0.9999


def test_embed_warm_call_streams_nothing(page):
    page.evaluate("() => pyapp.embed(['warm'], {model: 'minilm-l6', split: 3})")
    assert page.evaluate("() => pyapp.stats().last.weight_bytes") == 0


def test_bad_input_rejects_with_one_sentence(page):
    """Each bad call rejects with a JS Error: one line naming the problem, a code, no traceback
    in the message (it is kept on e.pythonTraceback)."""
    cases = {
        "pyapp.generate('Hi', {maxNewToken: 3})": ("maxNewToken", "bad_option"),
        "pyapp.generate('Hi', {maxNewTokens: -5})": ("maxNewTokens", "bad_option"),
        "pyapp.generate('Hi', {split: 'abc'})": ("split", "bad_option"),
        "pyapp.generate('Hi', {split: 31})": ("split", "bad_option"),
        "pyapp.generate('Hi', {topP: 2, greedy: false})": ("topP", "bad_option"),
        "pyapp.generate('', {})": ("empty", "bad_input"),
        "pyapp.generate('Hi', {model: 'minilm-l6'})": ("embedding model", "wrong_model"),
        "pyapp.embed(['a sentence'], {model: 'smollm2-135m'})": ("not an embedding model", "wrong_model"),
        "pyapp.embed([], {})": ("non-empty list", "bad_input"),
        "pyapp.embed(['x'], {model: 'nope'})": ("unknown model 'nope' (this server has: smollm2-135m, minilm-l6)",
                                                "bad_option"),
        "pyapp.embed(['word '.repeat(600)], {model: 'minilm-l6'})": ("context of 512", "too_long"),
        "pyapp.tokenize('Hi', {modle: 'smollm2-135m'})": ("did you mean model", "bad_option"),
    }
    for expr, (needle, code) in cases.items():
        e = page.evaluate(f"async () => {{ try {{ await {expr}; return null; }} catch (e) {{ "
                          "return {message: e.message, code: e.code, isError: e instanceof Error, "
                          "tb: e.pythonTraceback || ''}; } }")
        assert e is not None, expr
        assert needle in e["message"] and e["code"] == code and e["isError"], (expr, e)
        assert "\n" not in e["message"] and "Traceback" not in e["message"], (expr, e)
        assert "Traceback" in e["tb"], expr


def test_calls_queue_instead_of_tripping(page, references):
    """Two generate() at once both give the ids of a run alone; embed() during a generation
    works and leaves it undisturbed; wait: false is refused with 'busy' while the GPU is in use."""
    _, ids = references[("raw", 32)]
    r = page.evaluate("""(p) => {
        const o = {model: 'smollm2-135m', greedy: true, maxNewTokens: 6, split: 30};
        const a = pyapp.generate(p, o), b = pyapp.generate(p, o);
        const busy = pyapp.generate(p, {...o, wait: false}).then(() => null, (e) => e.code);
        const emb = pyapp.embed(['猫がマットの上に座っている。'], {model: 'minilm-l6', split: 6});
        return Promise.all([a, b, busy, emb]); }""", PROMPT)
    a, b, busy, emb = r
    assert a["ids"] == ids[:6] and b["ids"] == ids[:6], (a["ids"], b["ids"], ids[:6])
    assert busy == "busy"
    assert cosine(emb[0], st_embed(MINI, ["猫がマットの上に座っている。"])[0]) >= 0.9999


def test_embeddings_panel(page):
    """The panel's similarities are sentence-transformers' (cat/kitten 0.655, cat/stock 0.091)."""
    texts = page.input_value("#sentences").split("\n")
    ref = st_embed(MINI, texts)
    page.click("#embed-go")
    page.wait_for_function("() => document.querySelectorAll('#sim td').length === 9", timeout=120_000)
    cells = [float(t) for t in page.eval_on_selector_all("#sim td", "es => es.map(e => e.textContent)")]
    assert all(abs(cells[i * 4] - 1) < 1e-3 for i in range(3))
    assert abs(cells[1] - cosine(ref[0], ref[1])) < 2e-3 and abs(cells[2] - cosine(ref[0], ref[2])) < 2e-3, cells
    assert "embeddings/s" in page.inner_text("#embed-stats")
