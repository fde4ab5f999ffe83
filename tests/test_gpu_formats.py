"""Quantized weights on the GPU (lavapipe through wgpu-py): every GEMV variant, the fused
multi-GEMV and the embedding gather read GGUF blocks (Q4_1, Q8_0) directly and dequantize in
registers.  Blocks come from `gguf.quants.quantize`; the reference is
`gguf.quants.dequantize` of the same blocks (independent of pyapp), in float64.

Tolerance: max |gpu - ref| / max |ref| <= 1e-5 (f32 accumulation over K <= 1536; the
dequantized values themselves are exact in f32).  Shapes: SmolLM2-135M's real ones (576,
192, 1536, the 49152-row Q8_0 embedding / tied head) and odd ones (rows not a multiple of
any workgroup, K = 96 not a multiple of 64, more rows than one binding holds)."""
from __future__ import annotations

import numpy as np
import pytest

from pyapp import formats
from pyapp.models import Model, op

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")
gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

TOL = 1e-5
QFORMATS = ["q4_1", "q8_0"]


def blocks(fmt, rows, cols, seed):
    """(raw uint8 blocks [rows, row_bytes], gguf's dequantization of them as float64)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 0.2 + 0.03).astype(np.float32)
    t = gguf.GGMLQuantizationType[fmt.upper()]
    raw = quantize(x, t)
    assert raw.shape == (rows, formats.get(fmt).row_bytes(cols))
    return raw, dequantize(raw, t).astype(np.float64)


def relerr(got, ref):
    assert np.isfinite(got).all(), "non-finite output (poison survived?)"
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def gemv_backend(device, layer, shapes, dtypes, hidden, variants, max_binding=None, widths=None):
    from pyapp.gpu import GpuBackend
    m = Model(arch="test", config={}, hidden=hidden, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=hidden,
              vocab=1, max_context=16, causal=False, embed=[], layers=[layer], head=[])
    return GpuBackend(device, m, 0, 1, embed=False, head=False, shapes=shapes, dtypes=dtypes,
                      max_tokens=8, max_positions=16, variants=variants, max_binding=max_binding,
                      widths=widths)


def check_gemv(device, fmt, N, K, variant, T, seed=0, max_binding=None):
    raw, W = blocks(fmt, N, K, seed)
    g = gemv_backend(device, [op("linear", "x", "y", {"w": "w", "b": None})], {"w": (N, K)},
                     {"w": fmt}, K, {"linear": variant}, max_binding, {"y": N})
    g.write_weight("w", 0, raw)
    x = np.random.default_rng(seed + 1).standard_normal((T, K)).astype(np.float32)
    g.poison()
    g.forward(x=x, head=False)
    got = g.read_activation("y", T)
    err = relerr(got, x.astype(np.float64) @ W.T)
    g.destroy()
    assert err <= TOL, (fmt, N, K, variant, T, err)
    return g


VARIANTS = ["row", "wg", "sg", "sg4", "sgr2", "sgr4", "sgr8"]


@pytest.mark.parametrize("fmt", QFORMATS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [1, 5])
def test_gemv_odd_shape(device, fmt, variant, T):
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups")
    check_gemv(device, fmt, 135, 96, variant, T)          # 135 rows, K = 3 blocks


@pytest.mark.parametrize("fmt", QFORMATS)
@pytest.mark.parametrize("N,K", [(576, 576), (192, 576), (1536, 576), (576, 1536)])
@pytest.mark.parametrize("variant", ["row", "sg4"])
def test_gemv_smollm2_shapes(device, fmt, N, K, variant):
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups")
    check_gemv(device, fmt, N, K, variant, 1 if variant == "row" else 3, seed=N + K)


@pytest.mark.parametrize("fmt", QFORMATS)
def test_gemv_split_across_bindings(device, fmt):
    """Rows split over several buffers (chunks start on 4-byte boundaries: Q8_0 rows of 3
    blocks are 102 bytes)."""
    g = check_gemv(device, fmt, 203, 96, "row", 2, max_binding=4096)
    assert g is not None


@pytest.mark.parametrize("variant", ["wg", "sg4", "row"])
def test_fused_gate_up_mixed_formats(device, variant):
    """gate (Q4_1) and up (Q8_0) over one input in one dispatch (fuse forced on)."""
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups")
    N, K = 77, 64
    rg, Wg = blocks("q4_1", N, K, 5)
    ru, Wu = blocks("q8_0", N, K, 6)
    g = gemv_backend(device, [op("linear", "x", "g", {"w": "wg", "b": None}),
                              op("linear", "x", "u", {"w": "wu", "b": None})],
                     {"wg": (N, K), "wu": (N, K)}, {"wg": "q4_1", "wu": "q8_0"}, K,
                     {"linear": variant, "fuse": True}, widths={"g": N, "u": N})
    g.write_weight("wg", 0, rg)
    g.write_weight("wu", 0, ru)
    rec, n = g._plan(4, None, 0, 1, False, False, False, False)
    assert n == 1                                            # one dispatch for both
    x = np.random.default_rng(7).standard_normal((4, K)).astype(np.float32)
    g.poison()
    g.forward(x=x, head=False)
    assert relerr(g.read_activation("g", 4), x @ Wg.T) <= TOL
    assert relerr(g.read_activation("u", 4), x @ Wu.T) <= TOL


@pytest.mark.parametrize("fmt", QFORMATS)
@pytest.mark.parametrize("V,D,max_binding", [(49152, 576, None), (203, 96, 4096)])
def test_embedding_gather(device, fmt, V, D, max_binding):
    """Token rows straight out of the blocks (SmolLM2's Q8_0 table; an odd table split
    across bindings)."""
    from pyapp.gpu import GpuBackend
    raw, E = blocks(fmt, V, D, V)
    m = Model(arch="test", config={}, hidden=D, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=D, vocab=V,
              max_context=16, causal=False, embed=[op("embed", "ids", "x", {"tokens": "tok"})],
              layers=[[]], head=[])
    g = GpuBackend(device, m, 0, 1, embed=True, head=False, shapes={"tok": (V, D)}, dtypes={"tok": fmt},
                   max_tokens=8, max_positions=16, max_binding=max_binding)
    g.write_weight("tok", 0, raw)
    if max_binding:
        assert len(g.tensors["tok"].chunks) > 2
    ids = [0, V - 1, 7, V // 2, 100, 3]
    g.poison()
    got = g.forward(ids=ids, head=False)
    assert np.array_equal(got, E[ids].astype(np.float32))     # a gather: exact


def test_numpy_decode_matches_gguf():
    """pyapp.formats' decodes (the numpy backend's load) against gguf's, bit for bit."""
    for fmt in QFORMATS:
        raw, W = blocks(fmt, 37, 160, 3)
        assert np.array_equal(formats.get(fmt).decode(raw, (37, 160)), W.astype(np.float32))


# ----------------------------------------------------------------------------- quantize on import

def _tiny_hf(arch, path):
    """A tiny random HF model whose matrices have rows of whole 32-blocks."""
    import torch
    import transformers as tf
    torch.manual_seed(3)
    if arch == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2))
    else:
        m = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4,
                                             n_positions=64, bos_token_id=1, eos_token_id=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.eval()
    m.save_pretrained(path, safe_serialization=True)
    return m


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_import_quantize_q4_1(arch, device, tmp_path, monkeypatch):
    """`pyapp import --quantize q4_1`: the file holds gguf.quantize's blocks of each matrix
    (the output matrix in Q8_0, vectors in f32); numpy and the GPU run it and agree with
    transformers on the dequantized weights (logits <= 1e-4 relative; greedy ids equal)."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from pyapp.cli import main
    from pyapp.decode import generate
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    from pyapp.sampling import SamplingParams, sample_numpy
    from pyapp.weightfile import read_safetensors_header
    monkeypatch.setenv("PYAPP_MODELS_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("PYAPP_NO_PROGRESS", "1")
    tm = _tiny_hf(arch, tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--name", "tq", "--quantize", "q4_1"]) == 0
    out = tmp_path / "store" / "tq"
    header, _ = read_safetensors_header(out / "model.q4_1.safetensors")
    orig = load_file(str(tmp_path / "hf" / "model.safetensors"))
    blocks_ = load_file(str(out / "model.q4_1.safetensors"))
    fmts = {n: h["format"] for n, h in header.items()}
    assert "q4_1" in fmts.values() and "q8_0" in fmts.values()
    deq = {}
    for n, f in fmts.items():
        a = orig[n].astype(np.float32)
        if f in QFORMATS:
            t = gguf.GGMLQuantizationType[f.upper()]
            assert np.array_equal(blocks_[n], quantize(a, t)), n
            deq[n] = dequantize(blocks_[n], t)
        else:
            assert f == "f32" and a.ndim == 1 or n.endswith("wpe.weight"), (n, f)
            deq[n] = a
    # transformers on the dequantized weights
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in deq.items()}
    missing = tm.load_state_dict(sd, strict=False)
    assert not [k for k in missing.unexpected_keys]
    ids = [1, 17, 5, 60, 33, 8, 91]
    with torch.no_grad():
        ref = tm(torch.tensor([ids])).logits[0, -1].numpy().astype(np.float64)
    nb = NumpyBackend.load(out, "q4_1")
    gb = GpuBackend.load(out, "q4_1", device=device, autotune=False)
    assert gb.tensors[next(n for n, f in fmts.items() if f == "q4_1")].dtype == "q4_1"
    for be in (nb, gb):
        got = be.forward(ids=ids, cache=be.new_cache(32))[-1]
        assert relerr(got, ref) <= 1e-4, (be.name, relerr(got, ref))
    sp = SamplingParams()
    c = nb.new_cache(40)
    want = generate(lambda t, i: sample_numpy(nb.forward(ids=t, cache=c)[-1], sp, i), ids, 16).ids
    gc = gb.new_cache(40)
    assert generate(lambda t, i: gb.step(ids=t, cache=gc, params=sp, n=i), ids, 16).ids == want
    assert "q4_1" in __import__("json").loads((out / "pyapp.json").read_text())["dtypes"]
