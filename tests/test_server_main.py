"""`pyapp serve` as a process, and the web-asset installer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from test_server_util import ROOT, TINY_BERT, TINY_LLAMA, free_port, tiny_store  # noqa: F401


def test_pyapp_serve_process(tiny_store, tmp_path):
    port = free_port()
    env = {**os.environ, "PYAPP_MODELS_DIR": str(tiny_store), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "serve.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "pyapp", "serve", "--no-setup", "--model", TINY_LLAMA,
                          "--model", TINY_BERT, "--port", str(port), "--token", "tok",
                          "--web-dir", str(tmp_path)], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None and time.time() - t0 < 60, open(tmp_path / "serve.log").read()
            time.sleep(0.2)
        assert {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]} == {TINY_LLAMA, TINY_BERT}
        assert TINY_LLAMA in httpx.get(url + "/").text  # placeholder page while web/ has no index.html
        assert httpx.post(url + "/v1/sessions", json={"model": TINY_LLAMA, "split": 1}).status_code == 401
        r = httpx.post(url + "/v1/sessions", json={"model": TINY_LLAMA, "split": 1},
                       headers={"authorization": "Bearer tok"})
        assert r.status_code == 201
    finally:
        p.terminate()
        p.wait(10)
    text = open(tmp_path / "serve.log").read()
    assert f"http://127.0.0.1:{port}/" in text and "manifest" in text and "auth bearer token" in text


def test_serve_unknown_model_fails_cleanly(tiny_store):
    env = {**os.environ, "PYAPP_MODELS_DIR": str(tiny_store), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pyapp", "serve", "--no-setup", "--model", "nope"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_assets_copy(tmp_path):
    from server import assets

    nm = tmp_path / "node_modules"
    for f in assets.PYODIDE_FILES:
        (nm / "pyodide").mkdir(parents=True, exist_ok=True)
        (nm / "pyodide" / f).write_text(json.dumps({"packages": {}}) if f.endswith(".json") else f)
    for src in assets.COPIES:
        (nm / src).parent.mkdir(parents=True, exist_ok=True)
        (nm / src).write_text(src)
    (tmp_path / "package.json").write_text("{}")
    out = assets.ensure_assets(tmp_path, wheels=False, log=lambda m: None)
    v = tmp_path / "web" / "vendor"
    assert out["vendor"] == str(v)
    assert (v / "pyodide" / "pyodide.asm.wasm").read_text() == "pyodide.asm.wasm"
    assert (v / "tokenizers.min.mjs").read_text() == "@huggingface/tokenizers/dist/tokenizers.min.mjs"
    assert (v / "jinja" / "index.js").is_file()
    (nm / "pyodide" / "pyodide.mjs").write_text("newer and longer")
    assets.ensure_assets(tmp_path, wheels=False, log=lambda m: None)
    assert (v / "pyodide" / "pyodide.mjs").read_text() == "newer and longer"


@pytest.mark.skipif(not (ROOT / "node_modules" / "pyodide").is_dir(), reason="npm deps not installed")
def test_vendor_served_with_mime(tmp_path, tiny_store):
    from server import assets

    from test_server_util import start_server

    assets.ensure_assets(ROOT, wheels=False, log=lambda m: None)
    with start_server([TINY_LLAMA], tiny_store) as srv:
        r = httpx.get(srv.url + "/vendor/pyodide/pyodide.asm.wasm", headers={"Range": "bytes=0-3"})
        assert r.status_code == 206 and r.content == b"\x00asm"
        assert r.headers["content-type"] == "application/wasm"
        r = httpx.head(srv.url + "/vendor/pyodide/pyodide.mjs")
        assert r.headers["content-type"].startswith("text/javascript")
