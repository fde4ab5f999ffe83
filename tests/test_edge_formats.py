"""Weight formats on the browser edge (issue 13): headless Chromium (SwiftShader WebGPU) against
the real server app on loopback, SmolLM2-135M in f32 and Q4_1.

References, none from the code under test: the formats' byte counts from the safetensors headers
of the store's files (read here with json, not through the manifest code); greedy ids from
transformers (PyTorch) running the GGUF's blocks dequantized to f32 (``test_gpu_real.q4_ref``: the
Q4_1 decode is exact in f32, so the ids must be identical).

Run alone: ``python3 -m pytest tests/test_edge_formats.py -s`` (``-s`` prints the figures).
"""
from __future__ import annotations

import json
import struct
import urllib.request

import pytest

from test_edge_harness import LiveServer, have_chromium, have_models, webgpu_page
from test_gpu_real import q4_ref  # noqa: F401  (fixture: transformers' greedy ids)

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not have_models("smollm2-135m"), reason="SmolLM2 not in the store")]

SMOL = "smollm2-135m"
N_NEW = 8          # SwiftShader runs split 0 at ~1.5 tok/s


def safetensors_bytes(path) -> int:
    """The bytes of every tensor in a safetensors file, from its JSON header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in head.items() if k != "__metadata__")


def manifest_bytes(url) -> int:
    """Every weight tensor of a served manifest, each once (SmolLM2's tied table is one tensor)."""
    m = json.loads(urllib.request.urlopen(url).read())
    return sum({t["name"]: t["length"] for c in m["chunks"] for t in c["tensors"]}.values())


@pytest.fixture(scope="module")
def server():
    s = LiveServer(models=(SMOL,), preload=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def page(server):
    yield from webgpu_page(server.url)


def generate(page, prompt_ids, opts):
    """pyapp.generate on the prompt the reference used (decoded by the page's tokenizer, whose
    ids must come back unchanged)."""
    return page.evaluate("""async ([ids, o]) => {
        const text = await pyapp.runPython(`import pyapp.edge.api as a\\na.state.tokenizers['smollm2-135m'].decode(${JSON.stringify(ids)}, skip_special_tokens=False)`);
        return await pyapp.generate(text, o);
    }""", [prompt_ids, opts])


def test_formats_and_their_bytes(page):
    from pyapp.store import model_path
    d = model_path(SMOL)
    want = {"f32": safetensors_bytes(d / "model.safetensors"), "q4_1": safetensors_bytes(d / "model.q4_1.safetensors")}
    r = page.evaluate(f"() => pyapp.formats('{SMOL}')")
    got = {f["format"]: f["bytes"] for f in r["formats"]}
    print(f"\n[formats] {r}")
    assert got == want
    assert r["default"] == "q4_1"                      # the smallest
    q = next(f for f in r["formats"] if f["format"] == "q4_1")
    assert q["vs_f32"] == pytest.approx(want["q4_1"] / want["f32"], abs=1e-4) and q["vs_f32"] < 0.2
    # the page's picker shows each format with its bytes and the ratio, the default selected
    page.wait_for_function("() => document.querySelectorAll('#format option').length === 2")
    assert page.eval_on_selector("#format", "s => s.value") == "q4_1"
    label = page.eval_on_selector("#format", "s => s.selectedOptions[0].textContent")
    assert label == f"q4_1: {want['q4_1'] / 1e6:.1f} MB, {want['q4_1'] / want['f32']:.2f}× f32", label


@pytest.mark.parametrize("fmt,why", [("q3", "unknown"), ("f16", "not in the store for this model"),
                                     ("Q4_1", "case matters")])
def test_unknown_or_missing_format_is_one_sentence(page, fmt, why):
    e = page.evaluate("""async (f) => { try { await pyapp.generate('hi', {model: 'smollm2-135m', format: f, maxNewTokens: 1}); return null; }
        catch (e) { return {message: e.message, code: e.code, option: e.option}; } }""", fmt)
    assert e == {"message": f"option format must be one of q4_1, f32 for {SMOL}, not '{fmt}'",
                 "code": "bad_option", "option": "format"}, why


def test_format_of_the_wrong_type(page):
    e = page.evaluate("""async () => { try { await pyapp.embed('hi', {format: 4}); return null; }
        catch (e) { return {message: e.message, code: e.code, option: e.option}; } }""")
    assert e == {"message": "option format must be a non-empty string, not 4", "code": "bad_option", "option": "format"}


def test_q4_1_split_0_ids_equal_transformers_and_bytes_under_0_2x(page, server, q4_ref):  # noqa: F811
    _d, refs = q4_ref
    ids, want = refs["raw"]
    f32_split0 = manifest_bytes(f"{server.url}/models/{SMOL}/manifest.json?dtype=f32")
    r = generate(page, ids, {"model": SMOL, "split": 0, "format": "q4_1", "greedy": True, "maxNewTokens": N_NEW})
    st = r["stats"]
    print(f"\n[q4_1 split 0] {st['weight_bytes'] / 1e6:.1f} MB streamed (f32: {f32_split0 / 1e6:.1f} MB, "
          f"{st['weight_bytes'] / f32_split0:.3f}x) in {st['load']['seconds']:.1f} s = {st['load']['mb_per_s']:.0f} MB/s; "
          f"wasm heap growth {st['load']['wasm_heap_growth']} B; {st['tokens_per_second']} tok/s")
    assert r["promptIds"] == ids
    assert r["ids"] == want[:N_NEW]
    assert st["format"] == "q4_1"
    assert st["weight_bytes"] <= 0.2 * f32_split0
    assert st["load"]["wasm_heap_growth"] < 0.01 * st["weight_bytes"]


def test_q4_1_split_15_server_runs_the_same_format(page, server, q4_ref):  # noqa: F811
    """The server's head layers follow the edge's format: the session runs q4_1 weights, and the
    ids (server layers 0..14 + edge 15..29, both Q4_1) are transformers' on the dequantized GGUF."""
    _d, refs = q4_ref
    ids, want = refs["chat"]
    r = generate(page, ids, {"model": SMOL, "split": 15, "greedy": True, "maxNewTokens": N_NEW})
    assert r["stats"]["format"] == "q4_1"              # the default: the smallest
    assert r["ids"] == want[:N_NEW]
    weights = {s.weights for s in server.app.state.pyapp.sessions.sessions.values()}
    assert weights == {"q4_1"}


def test_serve_format_is_the_servers_default_weights():
    """`pyapp serve --format q4_1`: the server's own layers run Q4_1 where a model has it (a
    session that names no weights, /v1/models says so); a model without it stays f32."""
    from starlette.testclient import TestClient

    from server.app import create_app
    from server.main import build_parser
    assert build_parser().parse_args(["--format", "q4_k_m"]).format == "q4_k_m"
    with TestClient(create_app([SMOL, "minilm-l6"], web_dir=None, weights="q4_1", hosts=["testserver"])) as c:
        info = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert info[SMOL]["weights"] == "q4_1" and info["minilm-l6"]["weights"] == "f32"
        s = c.post("/v1/sessions", json={"model": SMOL, "split": 2}).json()
        assert s["weights"] == "q4_1", s
