"""Gemma 3 270M in the page (issue 18 step 6): headless Chromium (SwiftShader WebGPU) against the
real server app on loopback, every layer and the 262,144-row tied head on the edge (split 0), the
GGUF's own Q4_K_M blocks streamed as stored.

References, none from the code under test: transformers loading the same GGUF in float32
(``test_gemma_model.reference``, cached under ~/.cache/pyapp/refs): its tokenizer's ids and its
greedy ids; the GGUF's tensor bytes from the safetensors header of the store's block file (read
here with json). SwiftShader spends ~1 s a token on the head, so 4 new tokens.

Run alone: ``python3 -m pytest tests/test_gemma_browser.py -s`` (``-s`` prints the figures).
"""
from __future__ import annotations

import pytest

from test_edge_formats import safetensors_bytes
from test_edge_harness import LiveServer, have_chromium, webgpu_page
from test_gemma_model import CORPUS, MODEL, RAW, gemma_dir, reference  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium")]

N_NEW = 4


@pytest.fixture(scope="module")
def server(gemma_dir):  # noqa: F811
    s = LiveServer(models=(MODEL,), preload=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def page(server):
    yield from webgpu_page(server.url)


def test_gemma_in_the_picker_with_its_format(page, gemma_dir):  # noqa: F811
    page.wait_for_function("() => document.querySelectorAll('#format option').length > 0")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [MODEL]
    q = safetensors_bytes(gemma_dir / "model.q4_k_m.safetensors")
    assert page.eval_on_selector("#format", "s => s.value") == "q4_k_m"
    label = page.eval_on_selector("#format", "s => s.selectedOptions[0].textContent")
    assert label.startswith(f"q4_k_m: {q / 1e6:.1f} MB, "), label


def test_edge_tokenizer_equals_transformers(page, reference):  # noqa: F811
    """tokenizer.json (33 MB) through Tokenizers.js in the page: transformers' ids on the corpus
    (whitespace runs, digits, CJK, emoji, combining marks, the turn tokens) and the raw prompts."""
    texts = [t for t in CORPUS if t] + RAW
    want = [ids for t, ids in zip(CORPUS, reference["corpus"]) if t] + [reference["prompts"][f"raw:{p}"] for p in RAW]
    got = page.evaluate("async (ts) => { const out = []; for (const t of ts) out.push(await pyapp.tokenize(t, {model: 'gemma3-270m'})); return out; }", texts)
    assert got == want


def test_generate_split_0_q4_k_m_ids_bytes_heap(page, gemma_dir, reference):  # noqa: F811
    prompt = RAW[0]
    want, top2 = reference["greedy"][f"raw:{prompt}"]
    r = page.evaluate("(p) => pyapp.generate(p, {model: 'gemma3-270m', split: 0, format: 'q4_k_m', greedy: true, maxNewTokens: %d})" % N_NEW,
                      prompt)
    st = r["stats"]
    tensor_bytes = safetensors_bytes(gemma_dir / "model.q4_k_m.safetensors")
    print(f"\n[gemma split 0] {st['weight_bytes'] / 1e6:.1f} MB streamed (GGUF tensors {tensor_bytes / 1e6:.1f} MB) "
          f"in {st['load']['seconds']:.1f} s = {st['load']['mb_per_s']:.0f} MB/s; wasm heap growth "
          f"{st['load']['wasm_heap_growth']} B; first token {st['time_to_first_token']:.2f} s; "
          f"{st['tokens_per_second']} tok/s; GPU {st['gpu_bytes'] / 1e6:.0f} MB")
    assert r["promptIds"] == reference["prompts"][f"raw:{prompt}"]
    assert r["ids"] == want[:N_NEW], (r["ids"], top2[:N_NEW])
    assert st["format"] == "q4_k_m"
    # every tensor of the block file once: the tied table streamed once, no dequantized copy
    assert st["weight_bytes"] == tensor_bytes
    assert st["load"]["wasm_heap_growth"] < 0.01 * st["weight_bytes"]
