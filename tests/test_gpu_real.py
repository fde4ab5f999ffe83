"""The real models through `--backend wgpu` (wgpu-py on lavapipe): SmolLM2-135M
32 greedy tokens identical to the numpy executor and to transformers at split 0,
15 and 29; MiniLM embeddings cosine >= 0.9999 against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from pyapp.decode import generate
from pyapp.numpy_backend import NumpyBackend
from pyapp.sampling import SamplingParams, sample_numpy

pytestmark = [pytest.mark.gpu, pytest.mark.real_model]
pytest.importorskip("wgpu")

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ",
           "Once upon a time, in a land of 1000 lakes,"]


def _store(name):
    from pyapp.store import model_path
    from pathlib import Path
    d = Path(model_path(name))
    if not (d / "model.safetensors").exists():
        pytest.skip(f"{name} not in the store")
    return d


@pytest.fixture(scope="module")
def smol():
    from pyapp.tokenizer import Tokenizer
    d = _store("smollm2-135m")
    nb = NumpyBackend.load(d)
    tok = Tokenizer.from_pretrained(str(d))
    refs = {}
    for p in PROMPTS:
        ids = tok.encode(p).ids
        c = nb.new_cache(len(ids) + 40)
        refs[p] = (ids, generate(lambda t, i: sample_numpy(nb.forward(ids=t, cache=c)[-1], SamplingParams(), i),
                                 ids, 32).ids)
    return d, refs


@pytest.fixture(scope="module")
def torch_ref(smol):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from test_real_models import torch_greedy
    d, refs = smol
    m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    m.eval()
    return {p: torch_greedy(m, ids, 32) for p, (ids, _) in refs.items()}


@pytest.mark.parametrize("split", [0, 15, 29])
def test_smollm2_wgpu_greedy_identical(smol, torch_ref, split):
    from pyapp.cli import Runner
    d, refs = smol
    r = Runner(d, "wgpu", split)
    for p, (ids, ref) in refs.items():
        got = generate(r.step_fn(SamplingParams(), len(ids) + 40), ids, 32).ids
        assert got == ref, (split, p)
        assert got == torch_ref[p], (split, p)


def test_minilm_wgpu_cosine():
    from pyapp.gpu import GpuBackend
    from pyapp.tokenizer import Tokenizer
    d = _store("minilm-l6")
    nb, gb = NumpyBackend.load(d), GpuBackend.load(d)
    tok = Tokenizer.from_pretrained(str(d))
    for s in ["WebGPU runs compute shaders in the browser.", "A cat sat on the mat.",
              "Split inference between a server and the edge " * 6]:
        ids = tok.encode(s).ids
        r, g = nb.forward(ids=ids)[0], gb.forward(ids=ids)[0]
        assert float(r @ g / np.linalg.norm(r) / np.linalg.norm(g)) >= 0.9999


# ----------------------------------------------------------------------------- Q4_1

Q_PROMPTS = [("raw", "Quantized weights run in the browser because"),
             ("chat", "Name three rivers in 日本, briefly.")]


@pytest.fixture(scope="module")
def q4_ref():
    """(folder, {prompt: (ids, transformers' 32 greedy ids)}): transformers runs the store's
    model.safetensors, which is the GGUF's Q4_1/Q8_0 blocks dequantized by gguf into f32 (exact)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from test_real_models import torch_greedy

    from pyapp.tokenizer import Tokenizer
    d = _store("smollm2-135m")
    if not (d / "model.q4_1.safetensors").exists():
        pytest.skip("smollm2-135m has no Q4_1 file")
    tok = Tokenizer.from_pretrained(str(d))
    m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    m.eval()
    refs = {}
    for kind, p in Q_PROMPTS:
        if kind == "chat":
            p = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
            ids = tok.encode(p, add_special_tokens=False).ids
        else:
            ids = tok.encode(p).ids
        refs[kind] = (ids, torch_greedy(m, ids, 32))
    return d, refs


@pytest.mark.parametrize("backend,split", [("numpy", None), ("wgpu", 0), ("wgpu", 15), ("wgpu", 29)])
def test_smollm2_q4_1_greedy_identical_to_transformers(q4_ref, backend, split):
    """`--format q4_1`: the blocks go to the GPU as stored (Q4_1 linears, Q8_0 tied
    embedding/head, f32 norms); numpy decodes them at load."""
    from pyapp.cli import Runner
    d, refs = q4_ref
    r = Runner(d, backend, split, "q4_1")
    if backend == "wgpu":
        fmts = {t.dtype for t in r.tail.tensors.values()}
        assert "q4_1" in fmts and fmts <= {"q4_1", "q8_0", "f32"}
    for kind, (ids, ref) in refs.items():
        got = generate(r.step_fn(SamplingParams(), len(ids) + 40), ids, 32).ids
        assert got == ref, (backend, split, kind)
