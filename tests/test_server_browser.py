"""A cross-origin page in real Chromium cannot create or use sessions (issue 17): the same page
script, served from a second loopback origin (127.0.0.2), tries to create sessions (text/plain
and JSON), run a completion and open the WebSocket of a real session of a `pyapp serve` process;
every attempt is refused on the wire and the admin listing shows no new session and no step.
Loaded from the server's own origin, the same script succeeds (so the refusals are the origin's),
and a DNS-rebinding name (another Host, resolved to loopback) is refused outright."""
from __future__ import annotations

import functools
import http.server
import threading

import httpx
import pytest

from test_edge_harness import CHROME_ARGS, CHROMIUM, have_chromium
from test_server_util import TINY_LLAMA, Serve, free_port, ids_bytes, tiny_store  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="no chromium")]

ADMIN = {"authorization": "Bearer browser-admin"}
PAGE = """<!doctype html><meta charset="utf-8"><title>attacker</title><script>
async function attempt(name, url, type, body) {
  try {
    const r = await fetch(url, {method: "POST", headers: {"content-type": type}, body});
    return {name, status: r.status};
  } catch (e) { return {name, error: String(e)}; }
}
function socket(url) {
  return new Promise(resolve => {
    let opened = false;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { opened = true; ws.send(new Int32Array([5, 6]).buffer); };
    ws.onmessage = m => { resolve({name: "ws", opened, bytes: m.data.byteLength}); ws.close(); };
    ws.onclose = e => resolve({name: "ws", opened, code: e.code});
  });
}
window.attack = async (base, wsPath) => {
  const session = JSON.stringify({model: "tiny-llama", split: 2});
  const completion = JSON.stringify({model: "tiny-llama", prompt: "w5 w6", max_tokens: 2});
  return [
    await attempt("session-text", base + "/v1/sessions", "text/plain", session),
    await attempt("session-json", base + "/v1/sessions", "application/json", session),
    await attempt("completion-text", base + "/v1/completions", "text/plain", completion),
    await attempt("completion-json", base + "/v1/completions", "application/json", completion),
    await socket("ws" + base.slice(4) + wsPath),
  ];
};
</script>"""


@pytest.fixture(scope="module")
def site(tiny_store, tmp_path_factory):
    """The pyapp server (its web dir holds the page too) and a second origin serving the page."""
    web = tmp_path_factory.mktemp("web")
    (web / "attack.html").write_text(PAGE)
    srv = Serve(tiny_store, web, "--admin-token", ADMIN["authorization"].split()[1],
                models=(TINY_LLAMA,))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(web))
    evil = http.server.ThreadingHTTPServer(("127.0.0.2", free_port()), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        srv.wait()
        yield srv, f"http://127.0.0.2:{evil.server_address[1]}"
    finally:
        evil.shutdown()
        evil.server_close()
        srv.close()


def sessions(srv) -> dict[str, int]:
    r = httpx.get(srv.url + "/v1/sessions", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {s["id"]: s["position"] for s in r.json()["data"]}


def run_page(page_url: str, base: str, ws_path: str, port: int):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=CHROME_ARGS + ["--host-resolver-rules=MAP evil.test 127.0.0.1"])
        try:
            page = b.new_page()
            page.goto(page_url)
            results = {r["name"]: r for r in page.evaluate("([b, w]) => attack(b, w)", [base, ws_path])}
            rebind = page.goto(f"http://evil.test:{port}/attack.html")
            return results, rebind.status
        finally:
            b.close()


def test_cross_origin_page_cannot_create_or_use_sessions(site):
    srv, evil_origin = site
    victim = httpx.post(srv.url + "/v1/sessions", json={"model": TINY_LLAMA, "split": 2}).json()
    before = sessions(srv)
    assert before == {victim["id"]: 0}

    res, rebind = run_page(evil_origin + "/attack.html", srv.url, victim["ws"], srv.port)
    # nothing was created, and the victim's session took no step
    assert sessions(srv) == before
    for name in ("session-text", "session-json", "completion-text", "completion-json"):
        assert "error" in res[name], res   # the page learns nothing either
    assert res["ws"]["opened"] is False and res["ws"]["code"] == 1006, res["ws"]
    # the simple (text/plain) requests reached the server and were refused there; the JSON ones
    # never got past the CORS preflight (the server grants no cross-origin access)
    calls = [line.split('"')[1] + line.split('"')[2][:4] for line in srv.log.splitlines()
             if '"POST /v1/' in line or '"OPTIONS /v1/' in line or "/ws?" in line]
    assert calls == ["POST /v1/sessions HTTP/1.1 201",   # the victim's, made above
                     "POST /v1/sessions HTTP/1.1 403", "OPTIONS /v1/sessions HTTP/1.1 405",
                     "POST /v1/completions HTTP/1.1 403", "OPTIONS /v1/completions HTTP/1.1 405",
                     f"WebSocket /v1/sessions/{victim['id']}/ws?key=*** 403"], srv.log
    assert rebind == 421   # DNS rebinding: the attacker's name in Host

    # control: the very same script from the server's own origin gets through
    res, _ = run_page(srv.url + "/attack.html", srv.url, victim["ws"], srv.port)
    assert res["session-json"]["status"] == 201 and res["completion-json"]["status"] == 200, res
    assert res["session-text"]["status"] == 415   # JSON routes take only application/json
    assert res["ws"] == {"name": "ws", "opened": True, "bytes": 2 * 4 * 72}, res["ws"]
    after = sessions(srv)
    assert after[victim["id"]] == 2 and len(after) == 2
