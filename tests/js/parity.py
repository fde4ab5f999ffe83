"""The parity workload: runs the ``pyapp.tokenizer`` bridge over a corpus and returns plain data.

It runs unchanged in CPython (bridge on ``tokenizers``), in Pyodide under Node and in Pyodide in
headless Chromium (bridge on Tokenizers.js); tests/test_tokenizer.py compares each with what
``tokenizers``/``transformers`` give directly (``expected()`` there builds the same structure).

Entry point: ``await main(spec)`` where spec is::

    {"modules": {"tokenizers": URL, "jinja": URL},      # Pyodide only
     "tokenizers": [{"name": ..., "path": FOLDER} | {"name": ..., "url": BASE_URL}],
     "corpus": [str, ...], "chats": [[message, ...], ...], "probe_tokens": [str, ...]}
"""

import json
import sys

SETTINGS = ("default", "none", "trunc8_pad16", "left5_longest_x4", "trunc6_stride2_pad_left")


def apply_setting(tok, name):
    """Padding/truncation settings; the same calls are made on ``tokenizers.Tokenizer`` in the tests."""
    if name == "default":
        return
    tok.no_padding()
    tok.no_truncation()
    if name == "trunc8_pad16":
        tok.enable_truncation(8)
        tok.enable_padding(length=16, pad_id=0, pad_token=tok.id_to_token(0))
    elif name == "left5_longest_x4":
        tok.enable_truncation(5, direction="left")
        tok.enable_padding(direction="left", pad_id=1, pad_type_id=1, pad_token="<pad>", pad_to_multiple_of=4)
    elif name == "trunc6_stride2_pad_left":
        tok.enable_truncation(6, stride=2)
        tok.enable_padding(direction="left", length=7, pad_id=2, pad_token="P")


def enc_dict(e):
    return {
        "ids": list(e.ids),
        "tokens": list(e.tokens),
        "attention_mask": list(e.attention_mask),
        "type_ids": list(e.type_ids),
        "special_tokens_mask": list(e.special_tokens_mask),
    }


def vocab_crc(vocab):
    import zlib

    return [len(vocab), zlib.crc32(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8"))]


def run_one(tok, spec, make_stream):
    corpus = spec["corpus"]
    out = {
        "vocab_size": tok.get_vocab_size(),
        "vocab_size_model": tok.get_vocab_size(with_added_tokens=False),
        "vocab_crc": [vocab_crc(tok.get_vocab(with_added_tokens=w)) for w in (True, False)],
        "padding": tok.padding,
        "truncation": tok.truncation,
        "token_to_id": {t: tok.token_to_id(t) for t in spec["probe_tokens"]},
        "id_to_token": {str(i): tok.id_to_token(i) for i in (0, 1, 2, 100, 101, 1000, 10**7)},
        "settings": {},
    }
    for name in SETTINGS:
        apply_setting(tok, name)
        res = {}
        for special in (True, False):
            key = "special" if special else "plain"
            res[key] = [enc_dict(tok.encode(text, add_special_tokens=special)) for text in corpus]
            res[key + "_batch"] = [enc_dict(e) for e in tok.encode_batch(corpus, add_special_tokens=special)]
        out["settings"][name] = res
    tok.no_padding()
    tok.no_truncation()
    dec = {}
    for special in (True, False):
        seqs = [tok.encode(t, add_special_tokens=special).ids for t in corpus]
        tag = "special" if special else "plain"
        for skip in (True, False):
            dec[f"{tag}_skip{int(skip)}"] = [tok.decode(s, skip_special_tokens=skip) for s in seqs]
            dec[f"{tag}_skip{int(skip)}_batch"] = tok.decode_batch(seqs, skip_special_tokens=skip)
    # Prefixes cut at every id boundary (partial UTF-8 in byte-level models) and single ids.
    plain = [tok.encode(t, add_special_tokens=False).ids for t in corpus]
    dec["prefixes"] = [[tok.decode(s[:k]) for k in range(1, len(s) + 1)] for s in plain if len(s) < 80]
    dec["singles"] = [[tok.decode([i]) for i in s] for s in plain if len(s) < 80]
    out["decode"] = dec
    streams = {}
    for skip in (True, False):
        rows = []
        for text in corpus:
            ids = tok.encode(text, add_special_tokens=True).ids
            stream = make_stream(tok, skip)
            rows.append([stream(i) for i in ids])
        streams[f"skip{int(skip)}"] = rows
    out["stream"] = streams
    # A seeded random corpus of awkward characters: ids and decoded text only.
    tok.no_padding()
    tok.no_truncation()
    out["fuzz"] = [[e.ids, tok.decode(e.ids, skip_special_tokens=False)] for e in tok.encode_batch(spec.get("fuzz", []))]
    if tok.chat_template is not None:
        chats = {}
        for gen in (True, False):
            chats[f"gen{int(gen)}"] = [tok.apply_chat_template(c, add_generation_prompt=gen) for c in spec["chats"]]
        out["chat"] = chats
    return out


async def main(spec):
    from pyapp.tokenizer import DEFAULT_JINJA_URL, DEFAULT_TOKENIZERS_URL, DecodeStream, IS_PYODIDE, Tokenizer, load_js_modules

    if IS_PYODIDE:  # file:// URLs in Node; in the browser the site's defaults (/vendor/...)
        mods = spec.get("modules") or {}
        await load_js_modules(mods.get("tokenizers", DEFAULT_TOKENIZERS_URL), mods.get("jinja", DEFAULT_JINJA_URL))

    def make_stream(tok, skip):
        s = DecodeStream(tok, skip_special_tokens=skip)
        return s.step

    results = {"runtime": {"platform": sys.platform, "python": sys.version.split()[0]}}
    prefix = spec.get("fs_prefix", "")  # Node mounts the host filesystem at /host
    for entry in spec["tokenizers"]:
        entry = dict(entry, path=prefix + entry["path"]) if "path" in entry else entry
        if "url" in entry:
            tok = await Tokenizer.load(entry["url"])
        elif IS_PYODIDE and entry.get("as_js_object"):
            # The browser path without fetch: tokenizer.json parsed by JS, handed over unconverted.
            import js

            with open(entry["path"] + "/tokenizer.json", encoding="utf-8") as f:
                obj = js.JSON.parse(f.read())
            with open(entry["path"] + "/tokenizer_config.json", encoding="utf-8") as f:
                config = json.load(f)
            tok = Tokenizer.from_json(obj, config)
        else:
            tok = Tokenizer.from_file(entry["path"] + "/tokenizer.json")
        res = run_one(tok, spec, make_stream)
        res["backend"] = tok.backend
        results[entry["name"]] = res
    return results
