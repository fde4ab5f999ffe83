"""Harness for the browser-edge tests (no tests here): the real server app on loopback behind a
test-only fault injector, and headless Chromium with SwiftShader WebGPU; sentence-transformers
as the embeddings reference.

The fault injector is a thin ASGI layer in front of the real ``create_app`` (served by uvicorn
exactly as ``pyapp serve`` does): ``faults.add(kind, path_contains, ...)`` arms a fault for the
next ``count`` matching model-file responses: flipping one byte of the body ("corrupt"), dropping
the connection after ``after`` bytes ("cut"), or sending ``after`` bytes and then nothing for
``hold`` seconds before dropping it ("stall").
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("PYAPP_CHROMIUM", "/usr/bin/chromium")
CHROME_ARGS = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
               "--use-angle=swiftshader", "--use-webgpu-adapter=swiftshader",
               "--enable-precise-memory-info", "--js-flags=--expose-gc",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-quic", "--no-first-run", "--disable-dev-shm-usage"]
NO_WEBGPU_ARGS = ["--no-sandbox", "--disable-webgpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                  "--disable-dev-shm-usage"]


def have_models(*names):
    from pyapp.store import model_path
    return all((Path(model_path(n)) / "model.safetensors").exists() for n in names)


def have_chromium():
    return Path(CHROMIUM).exists()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def build_assets():
    """web/vendor and web/wheels (the pyapp wheel is rebuilt when pyapp/ changed)."""
    r = subprocess.run([sys.executable, "-m", "server.assets"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"server.assets failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


class Faults:
    def __init__(self):
        self.rules = []
        self.fired = []
        self.seen = []      # [path, Range, body bytes sent] of every model-file request: the wire's log
        self.lock = threading.Lock()
        self.released = threading.Event()   # ends every "stall" still holding (release())

    def add(self, kind, path_contains, range_start=None, at=1000, after=None, count=1, hold=8.0):
        """The next ``count`` responses whose path contains ``path_contains`` (and, if given,
        whose Range starts at ``range_start``) get byte ``at`` flipped ("corrupt"), are cut
        after ``after`` bytes ("cut"), or stall after ``after`` bytes for ``hold`` s or until
        release() ("stall")."""
        with self.lock:
            if kind == "stall":
                self.released.clear()
            self.rules.append(dict(kind=kind, path=path_contains, start=range_start, at=at,
                                   after=after if after is not None else at, count=count, hold=hold))

    def release(self):
        """End the stalls now: a test that must observe the page *during* a stall holds it with
        a long ``hold`` and releases it when done, instead of racing a fixed one on a loaded machine."""
        self.released.set()

    async def stall(self, hold):
        t_end = time.monotonic() + hold
        while not self.released.is_set() and time.monotonic() < t_end:
            await asyncio.sleep(0.05)

    def take(self, path, range_header):
        start = None
        if range_header and range_header.startswith("bytes="):
            try:
                start = int(range_header[6:].split("-")[0])
            except ValueError:
                start = None
        with self.lock:
            self.seen.append([path, range_header, 0])
            for r in self.rules:
                if r["path"] in path and (r["start"] is None or r["start"] == start):
                    r["count"] -= 1
                    if r["count"] <= 0:
                        self.rules.remove(r)
                    self.fired.append(dict(r, request_path=path, range=range_header))
                    return r
        return None


class FaultInjector:
    """ASGI middleware: corrupts or cuts one armed model-file response, and logs every model-file
    request with the body bytes it sent (``Faults.seen``)."""

    def __init__(self, app, faults):
        self.app = app
        self.faults = faults

    def __getattr__(self, k):          # app.state etc.
        return getattr(self.app, k)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/models/"):
            return await self.app(scope, receive, send)
        hdrs = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        rule = self.faults.take(scope["path"], hdrs.get("range", ""))
        seen = self.faults.seen[-1]      # take() appended it (no await in between)

        async def counted(msg):
            if msg["type"] == "http.response.body":
                seen[2] += len(msg.get("body", b""))
            await send(msg)

        if rule is None:
            return await self.app(scope, receive, counted)
        sent = [0]

        class Cut(Exception):
            pass

        async def faulty_send(msg):
            if msg["type"] == "http.response.body":
                body = msg.get("body", b"")
                n0 = sent[0]
                if rule["kind"] == "corrupt" and n0 <= rule["at"] < n0 + len(body):
                    b = bytearray(body)
                    b[rule["at"] - n0] ^= 0x5A
                    msg = dict(msg, body=bytes(b))
                elif rule["kind"] in ("cut", "stall") and n0 + len(body) > rule["after"]:
                    keep = body[:max(0, rule["after"] - n0)]
                    if keep:
                        await counted(dict(msg, body=keep, more_body=True))
                    if rule["kind"] == "stall":
                        await self.faults.stall(rule["hold"])
                    raise Cut()
                sent[0] += len(body)
            await counted(msg)

        try:
            await self.app(scope, receive, faulty_send)
        except Cut:
            return   # uvicorn drops the connection: the body ends short of its Content-Length


class LiveServer:
    """The real app (create_app) under uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, models=("smollm2-135m", "minilm-l6"), preload=True):
        import uvicorn

        from server.app import DEFAULT_WEB_DIR, create_app
        build_assets()
        self.faults = Faults()
        app = create_app(list(models), backend="numpy", web_dir=DEFAULT_WEB_DIR, preload=preload)
        self.app = FaultInjector(app, self.faults)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                             ws="websockets-sansio", lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 300 or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def launch(playwright, webgpu=True):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROME_ARGS if webgpu else NO_WEBGPU_ARGS)


def open_page(browser, url, logs=None, timeout_ms=180_000):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(timeout_ms)
    if logs is not None:
        page.on("console", lambda m: logs.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: logs.append(f"[pageerror] {e}"))
    page.goto(url + "/?nosw=1")
    page.wait_for_function("() => window.pyapp && window.pyapp.ready", timeout=timeout_ms)
    page.evaluate("() => pyapp.ready")
    return page


def webgpu_browser():
    """A module-scoped browser fixture's body: headless Chromium with WebGPU, closed after."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p, webgpu=True)
        try:
            yield b
        finally:
            b.close()


def webgpu_page(url):
    """A module-scoped page fixture's body: headless Chromium with WebGPU on `url`, closed after."""
    for b in webgpu_browser():
        yield open_page(b, url)


def numpy_generate(model, prompt, max_new, chat=False):
    """The ids `pyapp generate --greedy` gives (numpy backend), computed in-process."""
    from pyapp.cli import Runner, _eos_ids, _model_dir, load_tokenizer
    from pyapp.decode import check_context, generate
    from pyapp.sampling import SamplingParams
    d = _model_dir(model)
    tok = load_tokenizer(d)
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        pids = tok.encode(text, add_special_tokens=False).ids
    else:
        pids = tok.encode(prompt).ids
    r = Runner(d, "numpy")
    mx = check_context(len(pids), max_new, r.model.max_context)
    res = generate(r.step_fn(SamplingParams(greedy=True), len(pids) + mx), pids, mx, _eos_ids(d, r.model))
    return pids, res.ids


_ST = {}


def st_embed(model, texts):
    """sentence-transformers (PyTorch) on the store's folder, the independent reference: whole
    sequences (max_seq_length = the model's context, no truncation at 256), normalised."""
    from sentence_transformers import SentenceTransformer
    from pyapp.store import model_path
    if model not in _ST:
        m = SentenceTransformer(str(model_path(model)), device="cpu")
        m.max_seq_length = m[0].auto_model.config.max_position_embeddings
        _ST[model] = m
    return [[float(v) for v in e] for e in _ST[model].encode(list(texts), normalize_embeddings=True, batch_size=64)]


def cosine(a, b):
    import math
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
