"""Launched without WebGPU, the page still generates through the server, streamed, and says why."""
from __future__ import annotations

import pytest

from test_edge_harness import ARTIFACTS, LiveServer, have_chromium, have_models, launch, numpy_generate, open_page

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not have_models("smollm2-135m"), reason="SmolLM2 not in the store")]


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright
    srv = LiveServer(models=("smollm2-135m",), preload=True)
    logs = []
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=False)
            try:
                pg = open_page(b, srv.url, logs)
                # --disable-webgpu should remove navigator.gpu; make sure the page really has none
                if pg.evaluate("() => !!navigator.gpu"):
                    pg.close()
                    ctx = b.new_context()
                    ctx.add_init_script("Object.defineProperty(Navigator.prototype, 'gpu', {get: () => undefined})")
                    pg = ctx.new_page()
                    pg.set_default_timeout(180_000)
                    pg.goto(srv.url + "/?nosw=1")
                    pg.evaluate("() => pyapp.ready")
                yield pg
            finally:
                b.close()
    finally:
        srv.close()


def test_page_says_why_and_generates_on_the_server(page):
    ad = page.evaluate("() => pyapp.adapter()")
    assert not ad["available"] and ad["reason"]
    page.wait_for_function("() => !document.getElementById('notice').hidden", timeout=60_000)
    assert "No WebGPU" in page.inner_text("#notice")
    pids, ids = numpy_generate("smollm2-135m", "The capital of France is", 12)
    r = page.evaluate("() => { window._pieces = []; return pyapp.generate('The capital of France is', "
                      "{model: 'smollm2-135m', greedy: true, maxNewTokens: 12, split: 15, "
                      "onToken: (t) => window._pieces.push(t)}); }")
    assert r["stats"]["backend"] == "server"
    assert "WebGPU" in r["stats"]["reason"] or "navigator.gpu" in r["stats"]["reason"]
    assert r["promptIds"] == pids
    assert r["ids"] == ids
    pieces = page.evaluate("() => window._pieces")
    assert len(pieces) >= 2 and "".join(pieces) == r["text"]       # streamed, not one blob
    ARTIFACTS.mkdir(exist_ok=True)
    page.click("#go")
    page.wait_for_function("() => !document.getElementById('go').disabled && "
                           "document.getElementById('out').textContent.length > 30", timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "edge-page-no-webgpu.png"), full_page=True)
