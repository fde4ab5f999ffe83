"""A ``tokenizers.Tokenizer``-shaped bridge that runs on the Rust ``tokenizers`` package in CPython
and on Tokenizers.js (npm ``@huggingface/tokenizers``) inside Pyodide.

Pure stdlib, so that micropip can install it into a core Pyodide.

CPython::

    tok = Tokenizer.from_file("tokenizer.json")        # tokenizer_config.json beside it is read too
    tok.encode("Hello").ids

Pyodide (browser or Node)::

    await load_js_modules()                            # /vendor/tokenizers.min.mjs, /vendor/jinja/index.js
    tok = await Tokenizer.load("/models/smollm2-135m")  # fetches tokenizer.json (+ tokenizer_config.json)
    tok.encode("Hello").ids

In Pyodide the tokenizer stays a JavaScript object; encoding sends the text over and brings back
the ids only (tokens are looked up lazily from a vocabulary list fetched on first use).  The
padding, truncation and special-token logic that Tokenizers.js lacks or does differently from
``tokenizers`` (it ignores ``padding``/``truncation`` in tokenizer.json, for one) is done here in
Python, so both runtimes give the same encodings.
"""

from __future__ import annotations

import json
import os
import re
import sys
from array import array
from typing import Any, Callable, Iterable, Sequence

from pyapp import chat_template as _chat

__all__ = [
    "IS_PYODIDE",
    "Tokenizer",
    "Encoding",
    "DecodeStream",
    "load_js_modules",
    "set_js_modules",
    "DEFAULT_TOKENIZERS_URL",
    "DEFAULT_JINJA_URL",
]

IS_PYODIDE = sys.platform == "emscripten"

# Where the site serves the vendored ES modules (server/assets.py copies them from node_modules).
DEFAULT_TOKENIZERS_URL = "/vendor/tokenizers.min.mjs"
DEFAULT_JINJA_URL = "/vendor/jinja/index.js"

# --------------------------------------------------------------------------- JS modules (Pyodide)

_js_modules: dict[str, Any] = {"tokenizers": None, "jinja": None}
_js_importer = None


def _absolute_url(url: str) -> str:
    import js  # type: ignore[import-not-found]

    if "://" in url or url.startswith(("data:", "blob:")):
        return url
    location = getattr(js, "location", None)
    if location is None:  # Node: a bare filesystem path
        return "file://" + os.path.abspath(url) if url.startswith("/") else url
    return str(js.URL.new(url, location.href).href)


async def _js_import(url: str):
    """``import(url)`` from Python.  ``import()`` is syntax, so it needs one small JS function."""
    global _js_importer
    import js  # type: ignore[import-not-found]

    if _js_importer is None:
        hook = getattr(js.globalThis, "pyappImport", None)  # a page may provide one (strict CSP)
        _js_importer = hook if hook is not None else js.Function.new("u", "return import(u)")
    return await _js_importer(_absolute_url(url))


def set_js_modules(tokenizers: Any = None, jinja: Any = None) -> None:
    """Use already-imported JS module objects (JsProxy) for Tokenizers.js / @huggingface/jinja."""
    if tokenizers is not None:
        _js_modules["tokenizers"] = tokenizers
    if jinja is not None:
        _js_modules["jinja"] = jinja
        _chat.use_js_jinja(jinja)


async def load_js_modules(tokenizers: Any = DEFAULT_TOKENIZERS_URL, jinja: Any = DEFAULT_JINJA_URL) -> None:
    """Import Tokenizers.js and @huggingface/jinja (URLs, or module objects) once; later calls are no-ops.

    Pass ``jinja=None`` to skip the template engine.  Relative URLs resolve against the page.
    """
    for key, spec in (("tokenizers", tokenizers), ("jinja", jinja)):
        if spec is None or _js_modules[key] is not None:
            continue
        _js_modules[key] = await _js_import(spec) if isinstance(spec, str) else spec
    if _js_modules["jinja"] is not None:
        _chat.use_js_jinja(_js_modules["jinja"])


def _js_module(key: str):
    mod = _js_modules[key]
    if mod is None:
        raise RuntimeError(
            f"the {'Tokenizers.js' if key == 'tokenizers' else '@huggingface/jinja'} module is not loaded: "
            "call `await pyapp.tokenizer.load_js_modules(...)` first"
        )
    return mod


def _to_py_small(obj: Any) -> Any:
    """A small JS value (a config section) as plain Python data."""
    if obj is None or isinstance(obj, (str, int, float, bool, dict, list)):
        return obj
    if hasattr(obj, "to_py"):
        import js  # type: ignore[import-not-found]

        return json.loads(str(js.JSON.stringify(obj)))
    return obj


# --------------------------------------------------------------------------- Encoding


class Encoding:
    """The result of :meth:`Tokenizer.encode`: ``ids``, ``tokens``, ``attention_mask``, ``type_ids``,
    ``special_tokens_mask`` (the attributes of ``tokenizers.Encoding`` that pyapp uses)."""

    __slots__ = ("ids", "type_ids", "attention_mask", "special_tokens_mask", "_tokens", "_tokens_fn")

    def __init__(
        self,
        ids: list[int],
        tokens: list[str] | None = None,
        attention_mask: list[int] | None = None,
        type_ids: list[int] | None = None,
        special_tokens_mask: list[int] | None = None,
        tokens_fn: Callable[[], list[str]] | None = None,
    ):
        self.ids = ids
        self._tokens = tokens
        self._tokens_fn = tokens_fn
        self.attention_mask = attention_mask if attention_mask is not None else [1] * len(ids)
        self.type_ids = type_ids if type_ids is not None else [0] * len(ids)
        self.special_tokens_mask = special_tokens_mask if special_tokens_mask is not None else [0] * len(ids)

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            self._tokens = self._tokens_fn() if self._tokens_fn is not None else []
            self._tokens_fn = None
        return self._tokens

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self.ids)}, attributes=[ids, type_ids, tokens, special_tokens_mask, attention_mask])"

    def _pad(self, length: int, pad_id: int, pad_type_id: int, pad_token: str, direction: str) -> None:
        n = length - len(self.ids)
        if n <= 0:
            return
        old = self._tokens if self._tokens is not None else None
        fn = self._tokens_fn
        if direction == "left":
            self.ids = [pad_id] * n + self.ids
            self.type_ids = [pad_type_id] * n + self.type_ids
            self.attention_mask = [0] * n + self.attention_mask
            self.special_tokens_mask = [1] * n + self.special_tokens_mask
            if old is not None:
                self._tokens = [pad_token] * n + old
            elif fn is not None:
                self._tokens_fn = lambda: [pad_token] * n + fn()
        else:
            self.ids = self.ids + [pad_id] * n
            self.type_ids = self.type_ids + [pad_type_id] * n
            self.attention_mask = self.attention_mask + [0] * n
            self.special_tokens_mask = self.special_tokens_mask + [1] * n
            if old is not None:
                self._tokens = old + [pad_token] * n
            elif fn is not None:
                self._tokens_fn = lambda: fn() + [pad_token] * n


# --------------------------------------------------------------------------- padding / truncation params


def _padding_from_json(p: dict | None) -> dict | None:
    """tokenizer.json's ``padding`` section as the dict ``tokenizers.Tokenizer.padding`` returns."""
    if not p:
        return None
    strategy = p.get("strategy", "BatchLongest")
    length = strategy.get("Fixed") if isinstance(strategy, dict) else None
    return {
        "length": length,
        "pad_to_multiple_of": p.get("pad_to_multiple_of"),
        "pad_id": p.get("pad_id", 0),
        "pad_token": p.get("pad_token", "[PAD]"),
        "pad_type_id": p.get("pad_type_id", 0),
        "direction": str(p.get("direction", "Right")).lower(),
    }


_STRATEGIES = {"LongestFirst": "longest_first", "OnlyFirst": "only_first", "OnlySecond": "only_second"}


def _truncation_from_json(t: dict | None) -> dict | None:
    if not t:
        return None
    return {
        "max_length": t.get("max_length", 512),
        "stride": t.get("stride", 0),
        "strategy": _STRATEGIES.get(t.get("strategy", "LongestFirst"), "longest_first"),
        "direction": str(t.get("direction", "Right")).lower(),
    }


# --------------------------------------------------------------------------- Tokenizers.js fix-ups

# CJK ideographs outside the BMP (extensions B-F, compatibility supplement).  ``tokenizers``'
# BertNormalizer puts spaces around them like around BMP ideographs; Tokenizers.js 0.2.0 walks UTF-16
# code units and misses them, so the bridge adds the spaces before handing the text over.
_ASTRAL_CJK = re.compile("([\U00020000-\U0002A6DF\U0002A700-\U0002B73F\U0002B740-\U0002B81F"
                         "\U0002B820-\U0002CEAF\U0002F800-\U0002FA1F])")


def _text_fixup_for(normalizer: dict | None) -> Callable[[str], str] | None:
    """A str -> str pass that makes Tokenizers.js's normalizer agree with ``tokenizers``', or None."""
    if not normalizer or normalizer.get("type") != "BertNormalizer":
        return None
    if not normalizer.get("handle_chinese_chars", True):
        return None

    def fixup(text: str) -> str:
        return text if text.isascii() else _ASTRAL_CJK.sub(" \\1 ", text)

    return fixup


# Oniguruma's ``\s`` (what ``tokenizers`` compiles its patterns with) is Unicode White_Space: it has
# U+0085 and not U+FEFF; JavaScript's ``\s`` is the other way round.
_ONIG_SPACE = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
# The GPT-2 pattern of the ByteLevel pre-tokenizer, with ``\s``/``\S`` spelled out the Oniguruma way.
_BYTELEVEL_PATTERN = (
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^%(s)s\\p{L}\\p{N}]+|[%(s)s]+(?![^%(s)s])|[%(s)s]+"
    % {"s": _ONIG_SPACE}
)


def _patch_js_pre_tokenizer(node) -> int:
    """Make Tokenizers.js's pre-tokenizers split where ``tokenizers``' do; returns how many were patched.

    * ``Digits``: ``tokenizers`` uses ``char::is_numeric`` (Unicode Nd/Nl/No: "½", "Ⅻ", "٣", "１"...),
      Tokenizers.js 0.2.0 JS ``\\d`` (ASCII only), so SmolLM2's ``Digits(individual_digits=True)``
      splits " ½" differently.
    * ``ByteLevel``: its GPT-2 regex uses ``\\s``, which differs between JS and Oniguruma on U+0085
      and U+FEFF ("\\r\\n\\x85", "\\ufeff'll").

    The regexes are swapped in place on the JS objects, at load; encoding costs nothing more."""
    import js  # type: ignore[import-not-found]

    if node is None:
        return 0
    children = getattr(node, "tokenizers", None)
    if children is not None and js.Array.isArray(children):
        return sum(_patch_js_pre_tokenizer(child) for child in children)
    config = getattr(node, "config", None)
    kind = getattr(config, "type", None) if config is not None else None
    if not hasattr(node, "pattern"):
        return 0
    if kind == "Digits":
        individual = bool(getattr(config, "individual_digits", False))
        node.pattern = js.RegExp.new("[^\\p{N}]+|\\p{N}" + ("" if individual else "+"), "gu")
        return 1
    if kind == "ByteLevel" and str(getattr(node.pattern, "source", "")).startswith("'s|'t|'re|'ve|'m|'ll|'d"):
        node.pattern = js.RegExp.new(_BYTELEVEL_PATTERN, "gu")
        return 1
    return 0


# --------------------------------------------------------------------------- backends


class _RustBackend:
    """CPython: everything is delegated to ``tokenizers.Tokenizer``."""

    name = "tokenizers"

    def __init__(self, native):
        self.native = native

    def encode(self, text: str, add_special_tokens: bool) -> Encoding:
        return self._wrap(self.native.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: list[str], add_special_tokens: bool) -> list[Encoding]:
        return [self._wrap(e) for e in self.native.encode_batch(texts, add_special_tokens=add_special_tokens)]

    @staticmethod
    def _wrap(e) -> Encoding:
        return Encoding(e.ids, e.tokens, e.attention_mask, e.type_ids, e.special_tokens_mask)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.native.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(self, seqs: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return self.native.decode_batch(seqs, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.native.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.native.id_to_token(id)

    def get_vocab_size(self, with_added_tokens: bool) -> int:
        return self.native.get_vocab_size(with_added_tokens=with_added_tokens)

    def get_vocab(self, with_added_tokens: bool) -> dict[str, int]:
        return self.native.get_vocab(with_added_tokens=with_added_tokens)

    @property
    def padding(self):
        return self.native.padding

    @property
    def truncation(self):
        return self.native.truncation

    def enable_padding(self, **kw) -> None:
        self.native.enable_padding(**kw)

    def no_padding(self) -> None:
        self.native.no_padding()

    def enable_truncation(self, **kw) -> None:
        self.native.enable_truncation(**kw)

    def no_truncation(self) -> None:
        self.native.no_truncation()


class _JSBackend:
    """Pyodide: Tokenizers.js does normalization, pre-tokenization and the model; this class adds
    what ``tokenizers`` does around them (special tokens, truncation, padding) in Python."""

    name = "tokenizers.js"

    def __init__(
        self,
        js_json,
        js_config,
        padding: dict | None,
        truncation: dict | None,
        model_vocab_size: int,
        text_fixup: Callable[[str], str] | None = None,
    ):
        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        self._to_js = to_js
        mod = _js_module("tokenizers")
        self.js = mod.Tokenizer.new(js_json, js_config)
        _patch_js_pre_tokenizer(self.js.pre_tokenizer)
        parse = js.JSON.parse
        self._opt_plain = parse('{"add_special_tokens":false}')
        self._opt_dec = {
            True: parse('{"skip_special_tokens":true,"clean_up_tokenization_spaces":false}'),
            False: parse('{"skip_special_tokens":false,"clean_up_tokenization_spaces":false}'),
        }
        self._Int32Array = js.Int32Array
        self._Array = js.Array
        self._n_vocab_slots = int(self.js.model.vocab.length)
        self._model_vocab_size = model_vocab_size
        self._vocab: list | None = None
        self._padding = padding
        self._truncation = truncation
        self._fixup = text_fixup
        # What the post-processor puts around one sequence, with and without special tokens.
        self._frame = {flag: self._probe_post_processor(flag) for flag in (True, False)}

    # -- structure of the post-processor ------------------------------------------------------

    def _probe_post_processor(self, add_special_tokens: bool):
        """(prefix_ids, prefix_types, seq_type, suffix_ids, suffix_types) for a single sequence."""
        pp = self.js.post_processor
        if pp is None:
            return ([], [], 0, [], [])
        sentinel = "\x00pyapp-sentinel\x00"
        out = pp(self._to_js([sentinel]), None, add_special_tokens)
        tokens = list(out.tokens.to_py())
        types_js = getattr(out, "token_type_ids", None)
        types = list(types_js.to_py()) if types_js is not None else [0] * len(tokens)
        i = tokens.index(sentinel)
        conv = self.token_to_id
        pre = [conv(t) for t in tokens[:i]]
        suf = [conv(t) for t in tokens[i + 1 :]]
        if None in pre or None in suf:
            raise ValueError(f"post-processor adds tokens that are not in the vocabulary: {tokens}")
        return (pre, [int(x) for x in types[:i]], int(types[i] or 0), suf, [int(x) for x in types[i + 1 :]])

    def n_added_tokens(self) -> int:
        pre, _, _, suf, _ = self._frame[True]
        return len(pre) + len(suf)

    # -- encoding ------------------------------------------------------------------------------

    def _encode_ids(self, text: str) -> list[int]:
        """The model's ids for ``text`` (no special tokens added): the only data crossing back."""
        if self._fixup is not None:
            text = self._fixup(text)
        enc = self.js.encode(text, self._opt_plain)
        arr = self._Int32Array.from_(enc.ids)
        ids = arr.to_py().tolist()
        return ids

    def _tokens_for(self, ids: list[int]) -> Callable[[], list[str]]:
        def fn() -> list[str]:
            vocab = self.vocab_list()
            return [vocab[i] for i in ids]

        return fn

    def encode(self, text: str, add_special_tokens: bool) -> Encoding:
        enc = self._encode_one(text, add_special_tokens)
        if self._padding is not None:
            self._pad([enc], self._padding, batch=False)
        return enc

    def encode_batch(self, texts: list[str], add_special_tokens: bool) -> list[Encoding]:
        encs = [self.encode(t, add_special_tokens) for t in texts]
        if self._padding is not None:
            self._pad(encs, self._padding, batch=True)
        return encs

    def _encode_one(self, text: str, add_special_tokens: bool) -> Encoding:
        if not isinstance(text, str):
            raise TypeError(f"TextEncodeInput must be a str, got {type(text).__name__}")
        ids = self._encode_ids(text)
        t = self._truncation
        if t is not None:
            n_added = self.n_added_tokens() if add_special_tokens else 0
            max_len = max(t["max_length"] - n_added, 0)
            if t["strategy"] == "only_second":
                raise ValueError("Truncation error: Second sequence not provided")
            if len(ids) > max_len:
                ids = ids[:max_len] if t["direction"] == "right" else ids[len(ids) - max_len :]
        pre, pre_t, seq_t, suf, suf_t = self._frame[bool(add_special_tokens)]
        if pre or suf:
            core = ids
            ids = pre + core + suf
            type_ids = pre_t + [seq_t] * len(core) + suf_t
            special = [1] * len(pre) + [0] * len(core) + [1] * len(suf)
        else:
            type_ids = [seq_t] * len(ids)
            special = [0] * len(ids)
        return Encoding(ids, None, [1] * len(ids), type_ids, special, tokens_fn=self._tokens_for(ids))

    @staticmethod
    def _pad(encs: list[Encoding], p: dict, batch: bool) -> None:
        if not encs:
            return
        if p["length"] is not None:
            target = p["length"]
        else:
            target = max(len(e.ids) for e in encs)
        m = p.get("pad_to_multiple_of")
        if m and target % m:
            target += m - target % m
        for e in encs:
            e._pad(target, p["pad_id"], p["pad_type_id"], p["pad_token"], p["direction"])

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        if not ids:
            return ""
        n = self._n_vocab_slots
        try:
            packed = array("i", ids)  # fast path: one buffer copy into JS instead of one call per id
        except (TypeError, OverflowError):
            packed = array("i", [int(i) for i in ids if 0 <= int(i) < n])
        if min(packed) < 0 or max(packed) >= n:  # ``tokenizers`` skips ids it has no token for
            packed = array("i", [i for i in packed if 0 <= i < n])
            if not packed:
                return ""
        if len(packed) < 32:
            js_ids = self._to_js(packed.tolist())
        else:
            js_ids = self._Array.from_(self._to_js(memoryview(packed)))  # Tokenizers.js wants an Array
        return str(self.js.decode(js_ids, self._opt_dec[bool(skip_special_tokens)]))

    def decode_batch(self, seqs: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    # -- vocabulary ----------------------------------------------------------------------------

    def vocab_list(self) -> list:
        if self._vocab is None:
            self._vocab = list(self.js.model.vocab.to_py())
        return self._vocab

    def token_to_id(self, token: str) -> int | None:
        r = self.js.token_to_id(token)
        return None if r is None else int(r)

    def id_to_token(self, id: int) -> str | None:
        if not 0 <= id < self._n_vocab_slots:
            return None
        r = self.js.id_to_token(id)
        return None if r is None else str(r)

    def get_vocab_size(self, with_added_tokens: bool) -> int:
        if with_added_tokens:
            return int(self.js.get_vocab(True).size)
        return self._model_vocab_size

    def get_vocab(self, with_added_tokens: bool) -> dict[str, int]:
        vocab = self.vocab_list()
        out = {t: i for i, t in enumerate(vocab) if t is not None}
        if not with_added_tokens:
            for tok in self.js.get_added_tokens_decoder().values():
                if tok.content in out and out[tok.content] >= self._model_vocab_size:
                    del out[tok.content]
        return out

    # -- padding / truncation ------------------------------------------------------------------

    @property
    def padding(self):
        return dict(self._padding) if self._padding is not None else None

    @property
    def truncation(self):
        return dict(self._truncation) if self._truncation is not None else None

    def enable_padding(self, direction="right", pad_id=0, pad_type_id=0, pad_token="[PAD]", length=None, pad_to_multiple_of=None):
        if direction not in ("left", "right"):
            raise ValueError(f"Unknown `direction`: `{direction}`")
        self._padding = {
            "length": length,
            "pad_to_multiple_of": pad_to_multiple_of,
            "pad_id": pad_id,
            "pad_token": pad_token,
            "pad_type_id": pad_type_id,
            "direction": direction,
        }

    def no_padding(self) -> None:
        self._padding = None

    def enable_truncation(self, max_length, stride=0, strategy="longest_first", direction="right"):
        if strategy not in ("longest_first", "only_first", "only_second"):
            raise ValueError("Unknown `strategy`: `%s`. Use one of `longest_first`, `only_first`, `only_second`" % strategy)
        if direction not in ("left", "right"):
            raise ValueError(f"Unknown `direction`: `{direction}`. Use one of `left`, `right`")
        effective = max_length - self.n_added_tokens()
        if effective < stride:
            raise ValueError(
                f"tokenizer stride set to {stride}, which is greater than or equal to its effective max length of "
                f"{effective} (= {max_length} original max length - {self.n_added_tokens()} added special tokens), "
            )
        self._truncation = {"max_length": max_length, "stride": stride, "strategy": strategy, "direction": direction}

    def no_truncation(self) -> None:
        self._truncation = None


# --------------------------------------------------------------------------- the public class


def _js_config_subset(config: dict | None) -> dict:
    """What Tokenizers.js gets of tokenizer_config.json: the named special tokens only (its model
    classes read them), and no transformers-only behaviour, so that it matches ``tokenizers``."""
    out: dict[str, Any] = dict(_chat.special_tokens_from_config(config))
    out["clean_up_tokenization_spaces"] = False
    return out


def _read_config_beside(path: str) -> dict | None:
    folder = os.path.dirname(os.path.abspath(path))
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    config = None
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    jinja_path = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja_path):  # transformers >= 4.47 saves the template in its own file
        with open(jinja_path, encoding="utf-8") as f:
            config = dict(config or {}, chat_template=f.read())
    return config


class Tokenizer:
    """``tokenizers.Tokenizer``'s API on ``tokenizers`` (CPython) or Tokenizers.js (Pyodide).

    ``config`` is the model's ``tokenizer_config.json`` (a dict); it is needed only for chat
    templates and the named special tokens.
    """

    def __init__(self, backend, config: dict | None = None):
        self._backend = backend
        self.config: dict = dict(config or {})

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_str(cls, json_str: str, config: dict | None = None) -> "Tokenizer":
        if IS_PYODIDE:
            import js  # type: ignore[import-not-found]

            return cls._from_js_json(js.JSON.parse(json_str), config)
        from tokenizers import Tokenizer as _Native

        return cls(_RustBackend(_Native.from_str(json_str)), config)

    @classmethod
    def from_file(cls, path: str | os.PathLike, config: dict | str | os.PathLike | None = None) -> "Tokenizer":
        """Load tokenizer.json; ``tokenizer_config.json`` (and ``chat_template.jinja``) beside it are read
        unless ``config`` (a dict or a path) is given.  A folder may be passed for ``path``."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if config is None:
            config = _read_config_beside(path)
        elif not isinstance(config, dict):
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        if IS_PYODIDE:
            with open(path, encoding="utf-8") as f:
                return cls.from_str(f.read(), config)
        from tokenizers import Tokenizer as _Native

        return cls(_RustBackend(_Native.from_file(path)), config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Tokenizer":
        """A local model folder (tokenizer.json, tokenizer_config.json): never a hub name."""
        folder = os.fspath(folder)
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            raise FileNotFoundError(f"no tokenizer.json in {folder!r}")
        return cls.from_file(os.path.join(folder, "tokenizer.json"))

    @classmethod
    def from_json(cls, obj: Any, config: Any = None) -> "Tokenizer":
        """From a parsed tokenizer.json: a dict, or (Pyodide) a JS object, used as is (not converted)."""
        if config is not None and not isinstance(config, dict):
            config = _to_py_small(config)
        if IS_PYODIDE:
            if isinstance(obj, dict):
                import js  # type: ignore[import-not-found]

                obj = js.JSON.parse(json.dumps(obj))
            return cls._from_js_json(obj, config)
        if not isinstance(obj, dict):
            raise TypeError("from_json takes a dict in CPython")
        return cls.from_str(json.dumps(obj), config)

    @classmethod
    def _from_js_json(cls, js_json, config: dict | None) -> "Tokenizer":
        import js  # type: ignore[import-not-found]

        padding = _padding_from_json(_to_py_small(getattr(js_json, "padding", None)))
        truncation = _truncation_from_json(_to_py_small(getattr(js_json, "truncation", None)))
        vocab = js_json.model.vocab
        model_vocab_size = int(vocab.length) if js.Array.isArray(vocab) else int(js.Object.keys(vocab).length)
        js_config = js.JSON.parse(json.dumps(_js_config_subset(config)))
        fixup = _text_fixup_for(_to_py_small(getattr(js_json, "normalizer", None)))
        return cls(_JSBackend(js_json, js_config, padding, truncation, model_vocab_size, fixup), config)

    @classmethod
    async def load(
        cls,
        base_url: str,
        *,
        tokenizers_url: Any = DEFAULT_TOKENIZERS_URL,
        jinja_url: Any = DEFAULT_JINJA_URL,
    ) -> "Tokenizer":
        """Pyodide: import the JS modules if needed, then fetch ``{base_url}/tokenizer.json`` (kept as a JS
        object) and ``tokenizer_config.json`` / ``chat_template.jinja`` if the server has them.
        CPython: ``base_url`` is a folder and this is :meth:`from_file`."""
        if not IS_PYODIDE:
            return cls.from_file(base_url)
        import js  # type: ignore[import-not-found]

        await load_js_modules(tokenizers_url, jinja_url)
        base = base_url.rstrip("/")
        resp = await js.fetch(_absolute_url(base + "/tokenizer.json"))
        if not resp.ok:
            raise OSError(f"could not fetch {base}/tokenizer.json: HTTP {resp.status}")
        js_json = await resp.json()
        config = None
        resp = await js.fetch(_absolute_url(base + "/tokenizer_config.json"))
        if resp.ok:
            config = _to_py_small(await resp.json())
        resp = await js.fetch(_absolute_url(base + "/chat_template.jinja"))
        if resp.ok:
            config = dict(config or {}, chat_template=str(await resp.text()))
        return cls._from_js_json(js_json, config)

    # -- the tokenizers.Tokenizer API ----------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"tokenizers"`` (Rust, CPython) or ``"tokenizers.js"`` (Pyodide)."""
        return self._backend.name

    @property
    def native(self):
        """The underlying ``tokenizers.Tokenizer`` or Tokenizers.js object (JsProxy)."""
        return getattr(self._backend, "native", None) or getattr(self._backend, "js", None)

    def encode(self, sequence: str, add_special_tokens: bool = True) -> Encoding:
        return self._backend.encode(sequence, add_special_tokens)

    def encode_batch(self, inputs: Iterable[str], add_special_tokens: bool = True) -> list[Encoding]:
        return self._backend.encode_batch(list(inputs), add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens)

    def decode_batch(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return self._backend.decode_batch([list(s) for s in sequences], skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._backend.id_to_token(int(id))

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self._backend.get_vocab_size(with_added_tokens)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens)

    @property
    def padding(self) -> dict | None:
        return self._backend.padding

    @property
    def truncation(self) -> dict | None:
        return self._backend.truncation

    def enable_padding(
        self,
        direction: str = "right",
        pad_id: int = 0,
        pad_type_id: int = 0,
        pad_token: str = "[PAD]",
        length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self._backend.enable_padding(
            direction=direction,
            pad_id=pad_id,
            pad_type_id=pad_type_id,
            pad_token=pad_token,
            length=length,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    def no_padding(self) -> None:
        self._backend.no_padding()

    def enable_truncation(self, max_length: int, stride: int = 0, strategy: str = "longest_first", direction: str = "right") -> None:
        self._backend.enable_truncation(max_length=max_length, stride=stride, strategy=strategy, direction=direction)

    def no_truncation(self) -> None:
        self._backend.no_truncation()

    # -- beyond tokenizers: chat templates, streaming ------------------------------------------

    @property
    def chat_template(self) -> str | None:
        return _chat.chat_template_from_config(self.config)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return _chat.special_tokens_from_config(self.config)

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        *,
        tokenize: bool = False,
        chat_template: str | None = None,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        **kwargs: Any,
    ):
        """The prompt text ``transformers``' ``apply_chat_template(messages, tokenize=False, ...)`` gives
        (or its ids, without added special tokens, with ``tokenize=True``)."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no `chat_template`)")
        text = _chat.render(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens_map,
            tools=tools,
            documents=documents,
            **kwargs,
        )
        if tokenize:
            return self.encode(text, add_special_tokens=False).ids
        return text

    def decode_stream(self, skip_special_tokens: bool = True) -> "DecodeStream":
        return DecodeStream(self, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"<pyapp.tokenizer.Tokenizer on {self.backend}, vocab {self.get_vocab_size()}>"


class DecodeStream:
    """Incremental decoding for streamed generation, the algorithm of ``tokenizers.decoders.DecodeStream``.

    ``step(id)`` returns the text that id completes ("" while a character is still incomplete: a
    trailing U+FFFD from partial UTF-8 bytes is held back until the following ids complete it).
    Only a small window of ids is decoded at each step, so it costs O(1) per token.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = ""
        self.prefix_index = 0

    def step(self, id: int | Sequence[int]) -> str:
        if not isinstance(id, int):  # several ids at once
            return "".join(self.step(int(i)) for i in id)
        self.ids.append(id)
        text = self.tokenizer.decode(self.ids, self.skip_special_tokens)
        if len(text) > len(self.prefix) and not text.endswith("\ufffd"):
            if not text.startswith(self.prefix):
                raise ValueError("DecodeStream: the decoded text no longer starts with the previous prefix")
            new_text = text[len(self.prefix) :]
            new_prefix_index = len(self.ids) - self.prefix_index
            self.ids = self.ids[self.prefix_index :]
            self.prefix = self.tokenizer.decode(self.ids, self.skip_special_tokens)
            self.prefix_index = new_prefix_index
            return new_text
        return ""

    def flush(self) -> str:
        """At the end of a stream: whatever is still held back (replacement characters included)."""
        text = self.tokenizer.decode(self.ids, self.skip_special_tokens)
        out = text[len(self.prefix) :] if text.startswith(self.prefix) else ""
        self.ids, self.prefix, self.prefix_index = [], "", 0
        return out
