"""Shared fixtures for the server tests: a store of tiny models and a real uvicorn on a free port.

(No tests here; the test_server_*.py modules import these fixtures.)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_LLAMA = "tiny-llama"
TINY_BERT = "tiny-bert"
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant {% endif %}")


def write_tiny_tokenizer(d: Path, vocab: int, bert: bool = False):
    """A word-level tokenizer over 'w3'..'w{vocab-1}' (+ specials) so that text <-> ids is exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["[PAD]", "[CLS]", "[SEP]"] if bert else ["<unk>", "<s>", "</s>"]
    vocab_map = {t: i for i, t in enumerate(specials)}
    for i in range(len(specials), vocab):
        vocab_map[f"w{i}"] = i
    vocab_map.update({"user": vocab - 3, "assistant": vocab - 2, "system": vocab - 1})
    del vocab_map[f"w{vocab - 3}"], vocab_map[f"w{vocab - 2}"], vocab_map[f"w{vocab - 1}"]
    tk = Tokenizer(models.WordLevel(vocab_map, unk_token=specials[0]))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tk.add_special_tokens(specials)
    if bert:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tk.save(str(d / "tokenizer.json"))
    cfg = {"bos_token": specials[1], "eos_token": specials[2], "unk_token": specials[0]}
    if not bert:
        cfg["chat_template"] = CHAT_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def tiny_store(tiny_dir, tmp_path_factory):
    """A store folder holding tiny-llama and tiny-bert (with tokenizers)."""
    root = tmp_path_factory.mktemp("store")
    for arch, name in (("llama", TINY_LLAMA), ("bert", TINY_BERT)):
        src, _ = tiny_dir(arch)
        dst = root / name
        dst.mkdir()
        for f in src.iterdir():
            if f.is_file():
                shutil.copy(f, dst / f.name)
        cfg = json.loads((dst / "config.json").read_text())
        write_tiny_tokenizer(dst, cfg["vocab_size"], bert=(arch == "bert"))
        if arch == "llama":
            (dst / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    # a file outside the store that traversal attempts aim at
    (tmp_path_factory.getbasetemp() / "secret.txt").write_text("TOP SECRET")
    return root


@contextlib.contextmanager
def env_store(root):
    old = os.environ.get("PYAPP_MODELS_DIR")
    os.environ["PYAPP_MODELS_DIR"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYAPP_MODELS_DIR", None)
        else:
            os.environ["PYAPP_MODELS_DIR"] = old


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, log_level="warning", lifespan="on", ws="websockets-sansio")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def state(self):
        return self.app.state.pyapp

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def start_server(models, store_root=None, **kw):
    from server.app import create_app

    if store_root is not None:
        with env_store(store_root):
            app = create_app(models, **kw)
    else:
        app = create_app(models, **kw)
    return LiveServer(app)


ADMIN_TOKEN = "admin-secret"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def tiny_server(tiny_store):
    with start_server([TINY_LLAMA, TINY_BERT], tiny_store, web_dir=None, admin_token=ADMIN_TOKEN,
                      limits={"max_sessions": 256, "max_sessions_per_client": 256,
                              "max_body": 64 << 10}) as srv:
        yield srv


def real_store_has(*names):
    from pyapp import store

    return all((store.models_dir() / n / "config.json").is_file() for n in names)


def ids_bytes(ids):
    import numpy as np

    return np.asarray(ids, dtype="<i4").tobytes()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Serve:
    """`python -m pyapp serve` in a subprocess on a free loopback port; its log in a file."""

    def __init__(self, store: Path, tmp: Path, *args: str, models=(TINY_LLAMA, TINY_BERT)):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        env = {**os.environ, "PYAPP_MODELS_DIR": str(store), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}   # the log is read live
        cmd = [sys.executable, "-m", "pyapp", "serve", "--no-setup", "--port", str(self.port),
               "--web-dir", str(tmp)]
        for m in models:
            cmd += ["--model", m]
        self.proc = subprocess.Popen(cmd + list(args), cwd=ROOT, env=env,
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)

    def wait(self, timeout=90):
        t0 = time.time()
        while True:
            try:
                if httpx.get(self.url + "/healthz").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.time() - t0 < timeout, self.log
            time.sleep(0.2)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
