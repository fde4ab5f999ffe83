"""`pyapp synth`: random-weight models from an HF config alone.

References are independent of pyapp's executors: transformers (torch) loading the synthesized
folder (every tensor name and shape must be the ones HF expects: no missing or unexpected
keys), the real SmolLM2 store model's safetensors header, gguf's dequantize, and the kernel's
peak-RSS count of the writing process (os.wait4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyapp import store
from pyapp.numpy_backend import NumpyBackend
from pyapp.synth import synth
from pyapp.weightfile import read_safetensors_header

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = Path.home() / ".cache" / "pyapp" / "models" / "smollm2-135m"

# odd sizes, GQA, biases where the architecture has them
CONFIGS = {
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=203,
                  hidden_size=96, intermediate_size=136, num_hidden_layers=5, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True,
                  bos_token_id=1, eos_token_id=2),
    "gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=203, n_embd=96,
                 n_layer=4, n_head=6, n_positions=128, bos_token_id=1, eos_token_id=2),
    "bert": dict(model_type="bert", architectures=["BertModel"], vocab_size=203, hidden_size=96,
                 num_hidden_layers=3, num_attention_heads=6, intermediate_size=136,
                 max_position_embeddings=128, type_vocab_size=2),
    "gemma3_text": dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], vocab_size=203,
                        hidden_size=96, intermediate_size=136, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        max_position_embeddings=128, sliding_window=8, query_pre_attn_scalar=32,
                        rms_norm_eps=1e-6, rope_theta=1e6, rope_local_base_freq=1e4,
                        final_logit_softcapping=None, attn_logit_softcapping=None,
                        bos_token_id=1, eos_token_id=2),
}
PROMPTS = [[5, 17, 33, 99, 150, 7, 7, 8], [201], list(range(40, 70))]


@pytest.fixture()
def store_dir(tmp_path, monkeypatch):
    d = tmp_path / "models"
    monkeypatch.setenv("PYAPP_MODELS_DIR", str(d))
    return d


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def torch_model(arch: str, folder: Path):
    """transformers' model of the folder, and its loading report."""
    import transformers as tf

    cls = {"llama": tf.LlamaForCausalLM, "gpt2": tf.GPT2LMHeadModel, "bert": tf.BertModel,
           "gemma3_text": tf.Gemma3ForCausalLM}[arch]
    kw = {"add_pooling_layer": False} if arch == "bert" else {}
    model, info = cls.from_pretrained(str(folder), output_loading_info=True, torch_dtype="float32",
                                      attn_implementation="eager", **kw)
    return model.eval(), info


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def numpy_greedy(be: NumpyBackend, ids: list[int], n: int) -> list[int]:
    cache, out, x = be.new_cache(len(ids) + n), [], ids
    for _ in range(n):
        t = int(be.forward(ids=x, cache=cache)[-1].argmax())
        out.append(t)
        x = [t]
    return out


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_synth_loads_in_transformers_and_matches_numpy(store_dir, tmp_path, arch):
    """The folder is an HF checkpoint (no missing/unexpected tensors) and the numpy backend
    computes what transformers computes on it: greedy ids equal (decoders, 3 prompts of 1 to 30
    tokens, 12 new tokens), first-step logits / pooled embedding within 1e-4."""
    import torch

    path = synth(f"t-{arch}", write_config(tmp_path / "config.json", CONFIGS[arch]), seed=3)
    tm, info = torch_model(arch, path)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    be = NumpyBackend.load(path)
    for ids in PROMPTS:
        with torch.no_grad():
            out = tm(torch.tensor([ids]))
        if arch == "bert":
            h = out.last_hidden_state[0].mean(0)
            want = (h / h.norm()).numpy()
            got = be.forward(ids=ids)[0]
        else:
            want = out.logits[0, -1].numpy()
            got = be.forward(ids=ids, cache=be.new_cache(len(ids)))[-1]
            assert numpy_greedy(be, ids, 12) == torch_greedy(tm, ids, 12)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_activations_stay_finite_over_many_layers(store_dir, tmp_path):
    """48 layers: the residual stream stays finite and the logits are not degenerate (f16 file)."""
    cfg = dict(CONFIGS["llama"], num_hidden_layers=48)
    path = synth("deep", write_config(tmp_path / "c.json", cfg), dtype="f16")
    be = NumpyBackend.load(path, "f16")
    logits = be.forward(ids=PROMPTS[2], cache=be.new_cache(64))[-1]
    assert np.isfinite(logits).all() and 0.1 < float(logits.std()) < 100


def test_seed_decides_the_values(store_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", CONFIGS["gpt2"])
    a = (synth("a", cfg, seed=1) / "model.safetensors").read_bytes()
    b = (synth("b", cfg, seed=1) / "model.safetensors").read_bytes()
    c = (synth("c", cfg, seed=2) / "model.safetensors").read_bytes()
    assert a == b and a != c


def test_quantized_blocks_are_ggufs(store_dir, tmp_path):
    """`--dtype q8_0`/`q4_1`: the linears are blocks that gguf's dequantize reads, the tied
    table q8_0, norms f32 (llama.cpp's choice, `quantize_plan`); numpy's logits on the blocks
    equal transformers' on gguf's dequantized weights within 1e-4."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from safetensors.numpy import load_file, save_file

    cfg = dict(CONFIGS["llama"], tie_word_embeddings=True, hidden_size=128, num_attention_heads=4,
               intermediate_size=160)
    for tag in ("q8_0", "q4_1"):
        path = synth(f"q-{tag}", write_config(tmp_path / "c.json", cfg), dtype=tag)
        header, _ = read_safetensors_header(path / f"model.{tag}.safetensors")
        fmts = {n: h["format"] for n, h in header.items()}
        assert fmts["model.embed_tokens.weight"] == "q8_0"
        assert fmts["model.layers.0.mlp.down_proj.weight"] == tag
        assert fmts["model.norm.weight"] == "f32"
        raw = load_file(str(path / f"model.{tag}.safetensors"))
        deq = {n: (dequantize(a, GGMLQuantizationType[fmts[n].upper()]) if a.dtype == np.uint8 else a)
               for n, a in raw.items()}
        ref = tmp_path / f"ref-{tag}"
        ref.mkdir()
        save_file({n: np.ascontiguousarray(a, np.float32) for n, a in deq.items()}, str(ref / "model.safetensors"))
        (ref / "config.json").write_text((path / "config.json").read_text())
        tm, _ = torch_model("llama", ref)
        be = NumpyBackend.load(path, tag)
        with torch.no_grad():
            want = tm(torch.tensor([PROMPTS[0]])).logits[0, -1].numpy()
        got = be.forward(ids=PROMPTS[0], cache=be.new_cache(16))[-1]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))


@pytest.mark.real_model
def test_smollm2_config_gives_smollm2_shapes(store_dir):
    """SmolLM2-135M's config -> exactly the real store model's tensor names, dtypes and shapes;
    its tokenizer is copied and `pyapp models` marks the model synthetic."""
    if not (SMOLLM2 / "model.safetensors").is_file():
        pytest.skip("smollm2-135m is not in the store")
    path = synth("s", SMOLLM2 / "config.json", tokenizer_from=str(SMOLLM2))
    want, _ = read_safetensors_header(SMOLLM2 / "model.safetensors")
    got, _ = read_safetensors_header(path / "model.safetensors")
    assert {n: (h["dtype"], h["shape"]) for n, h in got.items()} == \
        {n: (h["dtype"], h["shape"]) for n, h in want.items()}
    assert (path / "tokenizer.json").read_bytes() == (SMOLLM2 / "tokenizer.json").read_bytes()
    (m,) = store.list_models()
    assert m["synthetic"] is True and m["source"] == "synth"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "pyapp", "models"], env=env, capture_output=True, text=True)
    assert "(synthetic: random weights)" in out.stdout


def test_writing_a_1gb_model_keeps_memory_bounded(store_dir, tmp_path):
    """A 1 GB f32 model (SmolLM2's shapes, 60 layers) written by the CLI in a child process:
    its peak RSS (the kernel's count, via GNU time) stays below 250 MB."""
    cfg = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_hidden_layers=60, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
               max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True)
    if not Path("/usr/bin/time").is_file():
        pytest.skip("needs /usr/bin/time")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYAPP_MODELS_DIR=str(store_dir))
    # GNU time forks the writer from a small process: a child forked from pytest would report
    # pytest's own RSS (ru_maxrss keeps the pre-exec high-water mark)
    cmd = ["/usr/bin/time", "-f", "peak_kb=%M", sys.executable, "-m", "pyapp", "synth", "big",
           "--config", str(write_config(tmp_path / "c.json", cfg))]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    peak_mb = int(p.stderr.rsplit("peak_kb=", 1)[1].split()[0]) / 1024
    size_mb = (store_dir / "big" / "model.safetensors").stat().st_size / 1e6
    print(f"synth: {size_mb:.0f} MB file, writer peak RSS {peak_mb:.0f} MB")
    assert size_mb > 950 and peak_mb < 250


def test_bad_input_is_one_line(store_dir, tmp_path):
    from pyapp.cli import main

    bad = write_config(tmp_path / "c.json", {"model_type": "mamba", "hidden_size": 8})
    assert main(["synth", "x", "--config", str(bad)]) == 1
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 500}}}))
    cfg = write_config(tmp_path / "l.json", CONFIGS["llama"])
    with pytest.raises(store.PyappError, match="beyond the config's vocab_size 203"):
        synth("x", cfg, tokenizer_from=str(tok))
    assert not (store_dir / "x").exists()
