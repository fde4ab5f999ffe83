"""Gemma 3 270M split between the real server app (numpy, layers [0, K)) and headless Chromium
(SwiftShader WebGPU, layers [K, 18), the norm and the 262,144-row tied head), the GGUF's own
Q4_K_M blocks streamed as stored (issue 18: splits 9 and 18, progressive offload).

Reference, not from the code under test: transformers loading the same GGUF in float32
(``test_gemma_model.reference``, cached under ~/.cache/pyapp/refs keyed by the GGUF's sha256):
its tokenizer's prompt ids and its greedy ids, 32 new tokens, for a raw prompt and a prompt in
Gemma's turn format (the page renders the turn through its own template path, ``chat: true``).

Progressive: a fresh page (no weights on its GPU) asks for split 9 with ``progressive: true``; the
server runs every layer at first (split 18), the split moves down as each layer's blocks land,
the KV of the moved layers (sliding-window rings of the local layers, one KV head) handed over on
the session's WebSocket; the ids must still be transformers'.

Run alone: ``python3 -m pytest tests/test_gemma_split_browser.py -s`` (``-s`` prints the speeds).
"""
from __future__ import annotations

import pytest

from test_edge_harness import ARTIFACTS, LiveServer, have_chromium, open_page, webgpu_browser
from test_gemma_model import LONG, MODEL, N_NEW, RAW, TURNS, assert_same_greedy, gemma_dir, reference  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium")]

N_LAYERS = 18


@pytest.fixture(scope="module")
def server(gemma_dir):  # noqa: F811
    s = LiveServer(models=(MODEL,), preload=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    yield from webgpu_browser()


def _page(browser, server, tag):
    logs = []
    pg = open_page(browser, server.url, logs, timeout_ms=900_000)
    try:
        yield pg
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"gemma-split-{tag}.log").write_text("\n".join(logs))
        pg.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """One page for the fixed splits: each split's tail is loaded once and kept."""
    yield from _page(browser, server, "fixed")


def generate(page, prompt, chat, split, n=N_NEW, **extra):
    opts = {"model": MODEL, "split": split, "format": "q4_k_m", "greedy": True, "maxNewTokens": n,
            "chat": chat, **extra}
    return page.evaluate("([p, o]) => pyapp.generate(p, o)", [prompt, opts])


def show(tag, r):
    s = r["stats"]
    print(f"\n[gemma {tag}] {s['weight_bytes'] / 1e6:.1f} MB streamed; first token {s['time_to_first_token']:.2f} s; "
          f"{s['tokens']} tokens at {s['tokens_per_second']:.3f} tok/s"
          + (f"; trace {[(t['token'], t['split']) for t in s['split_trace']]}, hand-over "
             f"{s['handover_bytes'] / 1e6:.3f} MB" if s.get("progressive") else ""))


CASES = [("raw", RAW[0], False), ("turn", TURNS[0], True)]


@pytest.mark.parametrize("split", [18, 9])
@pytest.mark.parametrize("kind,prompt,chat", CASES, ids=[c[0] for c in CASES])
def test_split_greedy_32_identical_to_transformers(page, reference, split, kind, prompt, chat):  # noqa: F811
    key = f"raw:{prompt}" if kind == "raw" else f"turn:{prompt}"
    want, top2 = reference["greedy"][key]
    r = generate(page, prompt, chat, split, progressive=False)
    show(f"split {split} {kind}", r)
    assert r["promptIds"] == reference["prompts"][key]
    assert r["stats"]["split"] == split and r["stats"]["format"] == "q4_k_m"
    assert_same_greedy(r["ids"], want, top2)


def progressive(browser, server, prompt, chat, n, tag):
    gen = _page(browser, server, tag)
    pg = next(gen)
    try:
        return generate(pg, prompt, chat, 9, n, progressive=True)
    finally:
        gen.close()


def test_progressive_to_9_from_a_fresh_page(browser, server, reference):  # noqa: F811
    """A turn-format prompt, 32 new tokens."""
    key = f"turn:{TURNS[1]}"
    want, top2 = reference["greedy"][key]
    r = progressive(browser, server, TURNS[1], True, N_NEW, "progressive")
    show("progressive to 9", r)
    s = r["stats"]
    assert r["promptIds"] == reference["prompts"][key]
    assert_same_greedy(r["ids"], want, top2)
    splits = [t["split"] for t in s["split_trace"]]
    assert s["progressive"] and splits[0] == N_LAYERS and splits[-1] == 9, s["split_trace"]
    assert splits == sorted(splits, reverse=True), splits
    assert s["split_trace"][-1]["token"] < len(want)
    assert s["handover_bytes"] > 0


def test_progressive_to_9_past_the_sliding_window(browser, server, reference):  # noqa: F811
    """A prompt of more than 600 tokens: when the split moves, the local layers' rings have
    wrapped (window 512), so a moved local layer hands over only its last 511 positions (into a
    ring that never held the older ones), a global layer (11, 17) every position.  16 new
    tokens, as the reference computed."""
    want, top2 = reference["greedy"]["long"]
    r = progressive(browser, server, LONG, False, len(want), "progressive-long")
    show("progressive to 9, long prompt", r)
    s = r["stats"]
    assert r["promptIds"] == reference["prompts"]["long"] and len(r["promptIds"]) > 600
    assert_same_greedy(r["ids"], want, top2)
    splits = [t["split"] for t in s["split_trace"]]
    assert splits[0] == N_LAYERS and splits[-1] == 9, s["split_trace"]
    # 9 layers' K and V (one head of 256 f32 each): 2 global layers of every position, 7 local of 511
    P = len(r["promptIds"])
    assert s["handover_bytes"] >= 2 * 256 * 4 * (2 * P + 7 * 511), s["handover_bytes"]
    if len(splits) == 2:      # one move, before token t: the caches hold P + t - 1 positions
        n = P + s["split_trace"][1]["token"] - 1
        assert s["handover_bytes"] == 2 * 256 * 4 * (2 * n + 7 * 511) + 9 * 32, s["handover_bytes"]
