"""Static deploy and offline use, end to end in headless Chromium (SwiftShader WebGPU) with a
persistent profile, so the service worker lives across reloads.

* `pyapp build-site` served by `python3 -m http.server` (no Range support) and `pyapp serve`:
  visit -> `pyapp.saveOffline` -> server stopped and the context offline -> reload -> greedy
  generation at split 0 gives the ids `pyapp generate --greedy --format q4_1` (numpy, CPU) gives.
  The site is build-site's default: q4_1 (the smallest format), no file over 16 MiB.
* A saved weight file rewritten in the Cache API is caught by its sha256, dropped and refetched.
* One visit, then offline: the page boots; generating names the model that was never saved.
* A tiny storage quota (DevTools `Storage.overrideQuotaForOrigin`) gives the documented error.

Figures (load MB/s, requests, cache size, offline boot) go to bench-results/offline-site.json;
screenshots to artifacts/.  Run alone: ``python3 -m pytest tests/test_offline_site.py -s``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from test_edge_harness import (ARTIFACTS, CHROME_ARGS, CHROMIUM, ROOT, LiveServer, free_port,
                               have_chromium, have_models)

pytestmark = [pytest.mark.browser, pytest.mark.real_model,
              pytest.mark.skipif(not have_chromium(), reason="no chromium"),
              pytest.mark.skipif(not have_models("smollm2-135m"), reason="SmolLM2 not in the store")]

SMOL = "smollm2-135m"
PROMPT = "Der Weg von Berlin nach 東京 dauert"   # German + CJK: nobody tuned for it
N_NEW = 4
RESULTS = {}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def expected():
    """The independent reference: the numpy backend through the CLI, on the CPU, in the format
    the page runs by default and build-site builds by default (the smallest: q4_1 blocks)."""
    r = subprocess.run([sys.executable, "-m", "pyapp", "generate", SMOL, PROMPT, "--greedy", "--format", "q4_1",
                        "--max-new-tokens", str(N_NEW), "--json"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300, check=True)
    return json.loads(r.stdout)["ids"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pyapp", "build-site", str(out), "--model", SMOL],
                   cwd=ROOT, env=ENV, check=True, timeout=600, capture_output=True)
    check_site_files(out, SMOL, "q4_1")
    return out


def check_site_files(out, model, fmt, cap=16 << 20):
    """build-site's default: the model's smallest format, and no file over the 16 MiB cap (a
    big chunk is one file per manifest piece; SmolLM2's 17.7 MB q4_1 table is two)."""
    m = json.loads((out / "models" / model / "manifest.json").read_text())
    assert m["dtype"] == fmt
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert max(sizes.values()) <= cap, max(sizes.items(), key=lambda kv: kv[1])
    assert any(c["file"] is None for c in m["chunks"])          # at least one chunk in piece files
    return m


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    (ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "offline-site.json").write_text(json.dumps(RESULTS, indent=1))
    print("\n[offline] " + json.dumps(RESULTS, indent=1))


class StaticServer:
    """`python3 -m http.server` on loopback: plain files, no Range support."""

    def __init__(self, folder, port=None):
        self.folder, self.port = folder, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind",
                                      "127.0.0.1", "-d", str(folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import httpx
        for _ in range(100):
            try:
                httpx.get(self.url + "/wheels/index.json", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("http.server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def browser(p, profile, logs):
    ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                               args=CHROME_ARGS, viewport={"width": 1400, "height": 1100})
    ctx.set_default_timeout(240_000)
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    page.on("console", lambda m: logs.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"[pageerror] {e}"))
    return ctx, page


def boot(page, url=None):
    """(Re)load the page; seconds until pyapp.ready, and the service worker is in control."""
    t0 = time.perf_counter()
    if url:
        page.goto(url + "/")
    else:
        page.reload()
    page.wait_for_function("() => window.pyapp && window.pyapp.ready")
    page.evaluate("() => pyapp.ready")
    dt = time.perf_counter() - t0
    page.evaluate("() => navigator.serviceWorker.ready")
    return dt


def generate(page, split=0):
    return page.evaluate("""async ([p, n, split]) => {
        try { const r = await pyapp.generate(p, {model: 'smollm2-135m', split, maxNewTokens: n, greedy: true});
              return {ids: r.ids, stats: r.stats, load: (await pyapp.stats()).loads}; }
        catch (e) { return {error: e.message}; } }""", [PROMPT, N_NEW, split])


def offline_cycle(p, page, ctx, url, stop, expected, tag):
    """saveOffline online, then the server gone and the context offline: reload and generate."""
    saved = page.evaluate("(m) => pyapp.saveOffline(m)", SMOL)
    assert saved["complete"] and saved["bytes"] == saved["total"], saved
    st = page.evaluate("() => pyapp.offlineStatus()")
    assert st["models"][SMOL]["complete"] and st["quota"] > 0
    again = page.evaluate("(m) => pyapp.saveOffline(m)", SMOL)        # resumes: nothing left to fetch
    assert again["downloaded"] == 0
    stop()
    ctx.set_offline(True)
    t_boot = boot(page)
    r = generate(page)
    assert "error" not in r, r
    assert r["ids"] == expected, (r["ids"], expected)
    assert r["stats"]["split"] == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"offline-{tag}.png"), full_page=True)
    load = next(iter(r["load"].values()))
    RESULTS[tag] = {"save_seconds": round(saved["seconds"], 2), "save_mb_per_s": round(saved["total"] / 1e6 / saved["seconds"], 1),
                    "cache_bytes": saved["bytes"], "offline_boot_seconds": round(t_boot, 2),
                    "offline_load_seconds": load["seconds"], "offline_load_mb_per_s": load["mb_per_s"],
                    "offline_load_requests": load["requests"], "tokens_per_second": r["stats"]["tokens_per_second"]}


def test_static_site_saves_boots_and_generates_offline(site, expected, tmp_path):
    from playwright.sync_api import sync_playwright
    srv = StaticServer(site)
    logs = []
    try:
        with sync_playwright() as p:
            ctx, page = browser(p, tmp_path / "profile", logs)
            try:
                boot(page, srv.url)
                assert page.evaluate("() => pyapp.site.static") is True
                assert page.evaluate("() => pyapp.defaultSplit('smollm2-135m')")["split"] == 0
                # the page fills the hint once it has read the models' formats and the split
                page.wait_for_function("() => document.querySelector('#split-why').textContent.includes('static site')",
                                       timeout=60_000)
                assert page.is_disabled("#split")
                msg = page.evaluate("() => pyapp.generate('hi', {split: 3}).catch(e => e.message)")
                assert msg.startswith("split 3 needs a pyapp server")
                # online load straight from the static host (no Range: one GET per chunk file)
                r = generate(page)
                assert "error" not in r, r
                assert r["ids"] == expected, r
                load = next(iter(r["load"].values()))
                RESULTS["static-online"] = {"load_seconds": load["seconds"], "mb_per_s": load["mb_per_s"],
                                            "requests": load["requests"], "bytes": load["bytes"]}
                boot(page)
                offline_cycle(p, page, ctx, srv.url, srv.close, expected, "static")
                assert "offline" in page.inner_text("#offline-info")

                # a saved file rewritten in the cache: caught by its digest, dropped, refetched online
                key, sha = page.evaluate("""async () => {
                    const c = await caches.open('pyapp-models');
                    const m = await (await c.match(new URL('models/smollm2-135m/manifest.json', location.href).href)).json();
                    const f = m.files['layer.7.bin'];
                    const key = new URL(f.url.slice(1), location.href).href;
                    const bad = new Uint8Array(f.size); bad.fill(7);
                    await c.put(key, new Response(bad));
                    return [key, f.sha256]; }""")
                srv = StaticServer(site, srv.port)
                ctx.set_offline(False)
                boot(page)
                r = generate(page)
                assert "error" not in r, r
                assert r["ids"] == expected, r
                assert next(iter(r["load"].values()))["refetches"] >= 1
                fixed = page.evaluate("""async (key) => {
                    const hit = await (await caches.open('pyapp-models')).match(key);
                    if (!hit) return null;
                    const d = await crypto.subtle.digest('SHA-256', await hit.arrayBuffer());
                    return Array.from(new Uint8Array(d), b => b.toString(16).padStart(2, '0')).join(''); }""", key)
                assert fixed == sha            # the good copy went back in, checked
            finally:
                ctx.close()
    finally:
        srv.close()
        (ARTIFACTS / "offline-static-console.log").write_text("\n".join(logs))


def test_one_visit_boots_offline_and_quota_error(site, tmp_path):
    from playwright.sync_api import sync_playwright
    srv = StaticServer(site)
    logs = []
    try:
        with sync_playwright() as p:
            ctx, page = browser(p, tmp_path / "profile", logs)
            try:
                boot(page, srv.url)
                cdp = ctx.new_cdp_session(page)
                cdp.send("Storage.overrideQuotaForOrigin", {"origin": srv.url, "quotaSize": 60_000_000})
                err = page.evaluate("() => pyapp.saveOffline('smollm2-135m').then(() => null, e => [e.name, e.message, e.stored])")
                assert err is not None and err[0] == "QuotaExceededError", err
                m = json.loads((site / "models" / SMOL / "manifest.json").read_text())
                need = sum(f["size"] for f in m["files"].values())     # ~100 MB of q4_1 + tokenizer
                assert err[1].startswith("Not enough storage to save smollm2-135m for offline use: "
                                         f"it needs {need / 1e6:.1f} MB more"), err
                assert "storage.estimate() reports" in err[1] and err[2] < 60_000_000, err
                st = page.evaluate("() => pyapp.offlineStatus()")["models"][SMOL]
                assert not st["complete"] and st["bytes"] == err[2]     # what fitted stays: a later save resumes
                RESULTS["quota-error"] = err[1]
                srv.close()
                ctx.set_offline(True)
                RESULTS["one-visit-offline-boot-seconds"] = round(boot(page), 2)
                msg = page.evaluate("() => pyapp.generate('hi', {model: 'smollm2-135m', maxNewTokens: 2}).catch(e => e.message)")
                assert msg.startswith("smollm2-135m is not saved for offline use"), msg
                page.screenshot(path=str(ARTIFACTS / "offline-one-visit.png"), full_page=True)
            finally:
                ctx.close()
    finally:
        srv.close()
        (ARTIFACTS / "offline-one-visit-console.log").write_text("\n".join(logs))


def test_pyapp_serve_passes_the_same_offline_test(expected, tmp_path):
    from playwright.sync_api import sync_playwright
    srv = LiveServer(models=(SMOL,), preload=False)
    logs = []
    try:
        with sync_playwright() as p:
            ctx, page = browser(p, tmp_path / "profile", logs)
            try:
                boot(page, srv.url)
                assert page.evaluate("() => pyapp.site.static") is False
                r = generate(page)                      # online: Range requests to the server
                assert r["ids"] == expected, r
                load = next(iter(r["load"].values()))
                RESULTS["serve-online"] = {"load_seconds": load["seconds"], "mb_per_s": load["mb_per_s"],
                                           "requests": load["requests"], "bytes": load["bytes"]}
                boot(page)
                offline_cycle(p, page, ctx, srv.url, srv.close, expected, "serve")
                assert "offline" in page.inner_text("#split-why")
                msg = page.evaluate("() => pyapp.generate('hi', {split: 15}).catch(e => e.message)")
                assert msg.startswith("offline: split 15 needs the pyapp server")
            finally:
                ctx.close()
    finally:
        srv.close()
        (ARTIFACTS / "offline-serve-console.log").write_text("\n".join(logs))
