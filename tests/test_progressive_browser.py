"""Progressive offload in the browser (issue 14, edge half): headless Chromium (SwiftShader
WebGPU) against the real server app; a fresh page per test (nothing loaded), the split starting
at the server (30) and moving down as each layer's weights land, the KV handed over on the
session's WebSocket.  Expected ids: `pyapp generate --greedy` on the CPU (numpy backend, the
`tokenizers` package's ids), computed in-process, never by the page.

Run alone: ``python3 -m pytest tests/test_progressive_browser.py -s``.
"""
from __future__ import annotations

import json

import pytest

from test_edge_harness import (ARTIFACTS, LiveServer, have_chromium, have_models, launch,
                               numpy_generate, open_page)

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not have_models("smollm2-135m"), reason="SmolLM2 not in the store")]

SMOL = "smollm2-135m"
PROMPT = "Photosynthesis turns sunlight, water and carbon dioxide into"
CHAT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def server():
    s = LiveServer(models=(SMOL,), preload=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p, webgpu=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server, request):
    """A fresh page: no weights on its GPU."""
    logs = []
    pg = open_page(browser, server.url, logs)
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"progressive-{request.node.name}.log").write_text("\n".join(logs))
    pg.close()


_REFS = {}


def reference(prompt, n, chat=False):
    if (prompt, n, chat) not in _REFS:
        _REFS[(prompt, n, chat)] = numpy_generate(SMOL, prompt, n, chat=chat)
    return _REFS[(prompt, n, chat)]


def hooks(page, **kw):
    """Set session.TEST hooks in the page's Python."""
    code = "from pyapp.edge import session\n" + "".join(f"session.TEST[{k!r}] = {v!r}\n" for k, v in kw.items())
    page.evaluate("(c) => pyapp.runPython(c + '\\nNone')", code)


def generate(page, prompt, split, n, chat=False, **extra):
    opts = {"model": SMOL, "split": split, "progressive": True, "greedy": True, "maxNewTokens": n,
            "chat": chat, **extra}
    return page.evaluate("([p, o]) => pyapp.generate(p, o)", [prompt, opts])


def show(tag, r):
    s = r["stats"]
    print(f"\n[progressive] {tag}: ttft {s['time_to_first_token']:.2f} s, load {s['load_seconds']:.1f} s, "
          f"{s['tokens']} tokens at {s['tokens_per_second']:.2f} tok/s, trace "
          f"{[(t['token'], t['split']) for t in s['split_trace']]}, hand-over "
          f"{s['handover_bytes'] / 1e6:.2f} MB, retries {s['handover_retries']}")


def test_split_15_from_a_fresh_page(page):
    pids, ids = reference(PROMPT, 32)
    r = generate(page, PROMPT, 15, 32)
    show("target 15", r)
    s = r["stats"]
    assert r["promptIds"] == pids and r["ids"] == ids, r["text"]
    assert s["progressive"] and s["split_trace"][0] == {"token": 0, "split": 30}
    assert s["split_trace"][-1]["split"] == 15 and s["split_trace"][-1]["token"] < len(ids)
    assert s["time_to_first_token"] < s["load_seconds"]
    # the tail stayed: a second call runs at the fixed split, nothing streamed, same ids
    r2 = page.evaluate("(p) => pyapp.generate(p, {model: 'smollm2-135m', split: 15, greedy: true, maxNewTokens: 8})", PROMPT)
    assert r2["ids"] == ids[:8] and r2["stats"]["weight_bytes"] == 0 and not r2["stats"]["progressive"]


@pytest.mark.parametrize("kind", ["raw", "chat"])
def test_split_0_from_a_fresh_page(page, kind):
    """Every layer ends on this GPU (SwiftShader: ~0.5 tok/s while the weights stream, so 16
    tokens); the split must reach 0 before the last token."""
    prompt, chat = (PROMPT, False) if kind == "raw" else (CHAT, True)
    pids, ids = reference(prompt, 16, chat)
    r = generate(page, prompt, 0, 16, chat)
    show(f"target 0 {kind}", r)
    s = r["stats"]
    assert r["promptIds"] == pids and r["ids"] == ids, r["text"]
    assert s["split_trace"][0]["split"] == 30 and s["split_trace"][-1]["split"] == 0
    assert s["split_trace"][-1]["token"] < len(ids)
    assert s["time_to_first_token"] < s["load_seconds"]


def test_forced_move_back_and_a_dropped_handover_keep_the_ids(page):
    """The test hook reports the edge slow from token 6: half the edge's layers go back to the
    server (its KV read from the GPU and sent as frames), twice; the first hand-over's socket
    is closed for real after the server's header: the move is retried on a new socket."""
    pids, ids = reference(PROMPT, 32)
    hooks(page, edge_slow_from=6, drop_in_handover=1)
    r = generate(page, PROMPT, 15, 32)
    show("target 15, slow from token 6, first hand-over dropped", r)
    s = r["stats"]
    assert r["ids"] == ids, r["text"]
    splits = [t["split"] for t in s["split_trace"]]
    assert s["handover_retries"] == 1
    assert min(splits) < splits[-1], splits       # moved down, then back up
    assert s["split_final"] == splits[-1] > 15


def test_socket_dropping_twice_is_a_clear_error(page):
    hooks(page, drop_in_handover=2)
    err = page.evaluate("(p) => pyapp.generate(p, {model: 'smollm2-135m', split: 15, progressive: true, "
                        "greedy: true, maxNewTokens: 32}).then(() => null, (e) => [e.message, e.code])", PROMPT)
    assert err is not None and err[1] == "network", err
    assert "dropped twice during the hand-over" in err[0], err
    # the page recovers: the next call (hooks spent) is right
    hooks(page, drop_in_handover=0)
    pids, ids = reference(PROMPT, 32)
    r = generate(page, PROMPT, 15, 8)
    assert r["ids"] == ids[:8]
