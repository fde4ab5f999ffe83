"""Gemma 3 270M on a static site and offline, end to end in headless Chromium (SwiftShader WebGPU)
with a persistent profile (the service worker lives across reloads), as tests/test_offline_site.py
does for SmolLM2.

`pyapp build-site OUT --model gemma3-270m` (its default, the GGUF's own q4_k_m blocks: 281 MB of
files, none over 16 MiB, rather than 1.07 GB of f32) served by `python3 -m http.server` (plain files, no Range):
the picker shows Gemma in q4_k_m; greedy generation at split 0 gives transformers' ids (the same
GGUF in float32, ``test_gemma_model.reference``); `pyapp.saveOffline` stores every file; then the
static server stopped and the context offline: reload, boot from the service worker and generate
again from the Cache API, same ids.  SwiftShader spends seconds a token on the 262,144-row head,
so 4 new tokens.  Figures go to bench-results/gemma-offline-site.json.

Under the real server app: `pyapp.saveOffline('gemma3-270m')` with no format saves the format
generate runs by default (q4_k_m), not the server's f32; offline, the page generates from it.

Run alone: ``python3 -m pytest tests/test_gemma_offline_site.py -s``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_edge_harness import ARTIFACTS, ROOT, have_chromium
from test_gemma_model import MODEL, RAW, gemma_dir, reference  # noqa: F401  (fixtures)
from test_offline_site import ENV, StaticServer, boot, browser, check_site_files

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium")]

PROMPT = RAW[2]          # 日本の首都は
N_NEW = 4


@pytest.fixture(scope="module")
def site(gemma_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("gemma-site")
    r = subprocess.run([sys.executable, "-m", "pyapp", "build-site", str(out), "--model", MODEL],
                       cwd=ROOT, env=ENV, check=True, timeout=900, capture_output=True, text=True)
    print("\n" + r.stdout[-600:])
    m = check_site_files(out, MODEL, "q4_k_m")   # the default; the 178 MB table in 16 MiB pieces
    assert isinstance(m["tokenizer"]["tokenizer.json"], list)   # 33 MB: in parts the edge joins
    return out


def generate(page):
    return page.evaluate("""async ([p, n, m]) => {
        try { const r = await pyapp.generate(p, {model: m, split: 0, maxNewTokens: n, greedy: true});
              return {ids: r.ids, promptIds: r.promptIds, stats: r.stats, load: (await pyapp.stats()).loads}; }
        catch (e) { return {error: e.message}; } }""", [PROMPT, N_NEW, MODEL])


def test_gemma_static_site_generates_saves_and_runs_offline(site, reference, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright
    want = reference["greedy"][f"raw:{PROMPT}"][0][:N_NEW]
    results, logs = {}, []
    srv = StaticServer(site)
    try:
        with sync_playwright() as p:
            ctx, page = browser(p, tmp_path / "profile", logs)
            ctx.set_default_timeout(900_000)
            try:
                boot(page, srv.url)
                assert page.evaluate("() => pyapp.site.static") is True
                page.wait_for_function("() => document.querySelectorAll('#format option').length > 0")
                assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [MODEL]
                assert page.eval_on_selector("#format", "s => s.value") == "q4_k_m"
                # online, straight from the static host (one GET per chunk file)
                r = generate(page)
                assert "error" not in r, r
                assert r["promptIds"] == reference["prompts"][f"raw:{PROMPT}"]
                assert r["ids"] == want, (r["ids"], want)
                assert r["stats"]["format"] == "q4_k_m" and r["stats"]["split"] == 0
                load = next(iter(r["load"].values()))
                results["static-online"] = {"load_seconds": load["seconds"], "mb_per_s": load["mb_per_s"],
                                            "requests": load["requests"], "bytes": load["bytes"],
                                            "tokens_per_second": r["stats"]["tokens_per_second"]}
                saved = page.evaluate("(m) => pyapp.saveOffline(m)", MODEL)
                assert saved["complete"] and saved["bytes"] == saved["total"], saved
                st = page.evaluate("() => pyapp.offlineStatus()")
                assert st["models"][MODEL]["complete"]
                # the network gone: the service worker boots the page, the Cache API holds the model
                srv.close()
                ctx.set_offline(True)
                t_boot = boot(page)
                r = generate(page)
                assert "error" not in r, r
                assert r["ids"] == want, (r["ids"], want)
                assert r["stats"]["split"] == 0
                load = next(iter(r["load"].values()))
                results["offline"] = {"save_seconds": round(saved["seconds"], 2), "cache_bytes": saved["bytes"],
                                      "offline_boot_seconds": round(t_boot, 2), "load_seconds": load["seconds"],
                                      "mb_per_s": load["mb_per_s"], "tokens_per_second": r["stats"]["tokens_per_second"]}
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "gemma-offline-static.png"), full_page=True)
            finally:
                ctx.close()
    finally:
        srv.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "gemma-offline-static-console.log").write_text("\n".join(logs))
        (ROOT / "bench-results").mkdir(exist_ok=True)
        (ROOT / "bench-results" / "gemma-offline-site.json").write_text(json.dumps(results, indent=1))
        print("\n[gemma offline] " + json.dumps(results, indent=1))


def test_gemma_under_pyapp_serve_saves_its_blocks_and_runs_offline(gemma_dir, reference, tmp_path):  # noqa: F811
    """`saveOffline('gemma3-270m')` with no format under the real server saves the format generate
    runs by default (q4_k_m, ~281 MB with the tokenizer), not the server's f32 (1.07 GB); then the
    server gone and the context offline: the page boots and generates from the Cache API."""
    from playwright.sync_api import sync_playwright

    from test_edge_harness import LiveServer
    want = reference["greedy"][f"raw:{PROMPT}"][0][:N_NEW]
    logs = []
    srv = LiveServer(models=(MODEL,), preload=False)
    try:
        with sync_playwright() as p:
            ctx, page = browser(p, tmp_path / "profile", logs)
            ctx.set_default_timeout(900_000)
            try:
                boot(page, srv.url)
                assert page.evaluate("() => pyapp.site.static") is False
                saved = page.evaluate("(m) => pyapp.saveOffline(m)", MODEL)
                assert saved["complete"] and saved["bytes"] == saved["total"], saved
                st = page.evaluate("() => pyapp.offlineStatus()")["models"][MODEL]
                assert st["complete"] and st["dtype"] == "q4_k_m", st
                assert saved["total"] < (gemma_dir / "model.safetensors").stat().st_size / 3, saved
                srv.close()
                ctx.set_offline(True)
                boot(page)
                r = generate(page)
                assert "error" not in r, r
                assert r["ids"] == want, (r["ids"], want)
                assert r["stats"]["format"] == "q4_k_m" and r["stats"]["split"] == 0
                print(f"\n[gemma serve offline] saved {saved['total'] / 1e6:.1f} MB in {saved['seconds']:.1f} s; "
                      f"offline {r['stats']['tokens_per_second']} tok/s")
            finally:
                ctx.close()
    finally:
        srv.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "gemma-offline-serve-console.log").write_text("\n".join(logs))
