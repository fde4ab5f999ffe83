"""The weight streamer against faults on the wire: the real ``pyapp/edge/stream.py`` + ``stream.js``
in Pyodide (Node's fetch, AbortController and WebCrypto) fetch from a real HTTP server (in this
test, a thread) that flips a byte, cuts a response short, or stops sending.  The expected bytes
are the file's own (hashlib here), not anything the streamer computed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
SHA_LIB = ROOT / "node_modules" / "js-sha256" / "src" / "sha256.js"
pytestmark = pytest.mark.skipif(NODE is None or not (ROOT / "node_modules" / "pyodide").is_dir(),
                                reason="needs node and node_modules/pyodide")

BLOB = os.urandom(1_500_000)
# two tensors 200 KB apart: two Range requests (the gap is over COALESCE_GAP)
T1, T2 = (1000, 400_000), (700_000, 500_000)
STALL_S = 0.5          # the test's stall timeout (stream.js stallMs)


class Handler(BaseHTTPRequestHandler):
    seen: dict = {}
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/vendor/js-sha256/sha256.js"):
            body = SHA_LIB.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        kind = self.path.strip("/").split("/")[0]
        if not self.path.endswith("/blob.bin"):
            self.send_error(404)
            return
        a, b = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
        body = BLOB[a:b + 1]
        with self.lock:
            n = self.seen[kind] = self.seen.get(kind, 0) + 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{len(BLOB)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind.startswith("corrupt") and n == 1:        # one flipped byte in the first reply
            body = bytearray(body)
            body[12_345] ^= 0x5A
            body = bytes(body)
        elif kind == "cut" and n == 1:                    # the first reply breaks off at 150 KB
            self.wfile.write(body[:150_000])
            self.wfile.flush()
            self.close_connection = True
            return
        elif kind == "stall":                             # every reply stops after 4 KB
            self.wfile.write(body[:4096])
            self.wfile.flush()
            time.sleep(4 * STALL_S + 1)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    ranges = [list(T1), list(T2)]
    sha = hashlib.sha256(b"".join(BLOB[o:o + n] for o, n in ranges)).hexdigest()
    files = {k: {"url": f"/{k}/blob.bin"} for k in ("ok", "corrupt", "cut", "stall", "corrupt2", "nolib")}
    manifest = {"files": files, "chunks": [{
        "id": "layer.0", "layer": 0, "file": "ok", "ranges": ranges, "bytes": T1[1] + T2[1], "sha256": sha,
        "tensors": [{"name": "a", "offset": T1[0], "length": T1[1]}, {"name": "b", "offset": T2[0], "length": T2[1]}]}]}
    stall = {"stallMs": STALL_S * 1000, "maxTries": 1}
    scenarios = [{"name": "ok", "file": "ok"}, {"name": "corrupt", "file": "corrupt"},
                 {"name": "cut", "file": "cut"}, {"name": "stall", "file": "stall", "opts": stall},
                 # without crypto.subtle: the vendored library is missing (refused), then loaded
                 {"name": "nolib", "file": "nolib", "no_subtle": True, "base": base + "/nowhere"},
                 {"name": "corrupt2", "file": "corrupt2"}]
    tmp = tmp_path_factory.mktemp("wire")
    (tmp / "spec.json").write_text(json.dumps({"base": base, "manifest": manifest, "scenarios": scenarios}))
    r = subprocess.run([NODE, str(ROOT / "tests/js/run_pyodide.mjs"), str(ROOT / "tests/js/stream_wire.py"),
                        str(tmp / "spec.json"), str(tmp / "out.json")], capture_output=True, text=True, timeout=300)
    srv.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text()), sha


def test_clean_stream_is_verified(wire):
    out, sha = wire
    r = out["ok"]
    assert r["ok"] and r["sha256"] == sha and r["verified"] and r["requests"] == 2 and r["refetches"] == 0


def test_flipped_byte_is_caught_and_refetched(wire):
    out, sha = wire
    r = out["corrupt"]
    assert r["ok"] and r["refetches"] == 1 and r["sha256"] == sha, r


def test_cut_response_resumes_from_the_missing_byte(wire):
    out, sha = wire
    r = out["cut"]
    assert r["ok"] and r["sha256"] == sha and r["refetches"] == 0, r
    assert r["resumes"] + r["errors"] >= 1 and r["requests"] == 3, r     # 2 planned + 1 resume


def test_stalled_response_fails_within_the_stated_timeout(wire):
    out, _ = wire
    r = out["stall"]
    # maxTries 1: two attempts of STALL_S each, plus one backoff of 0.1 s
    assert not r["ok"] and r["code"] == "timeout", r
    assert "stalled" in r["message"] and "\n" not in r["message"] and "Traceback" not in r["message"]
    assert r["seconds"] < 2 * STALL_S + 3, r


def test_without_crypto_subtle_integrity_stays_on(wire):
    out, sha = wire
    r = out["nolib"]        # no crypto.subtle and no library: refused, with the reason
    assert not r["ok"] and r["code"] == "integrity" and "crypto.subtle" in r["message"], r
    r = out["corrupt2"]     # the vendored js-sha256 loaded from the site: a flipped byte is caught
    assert r["ok"] and r["verified"] and r["refetches"] == 1 and r["sha256"] == sha, r
