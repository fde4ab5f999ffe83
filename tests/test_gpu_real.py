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


@pytest.mark.parametrize("split,chunks,ahead", [(0, None, True), (15, None, True), (29, None, True),
                                               (0, (3, 7), False), (15, (3, 7), False), (15, (3, 7), True),
                                               (0, None, False)])
def test_smollm2_wgpu_greedy_identical(smol, torch_ref, split, chunks, ahead):
    """`chunks`: each step-by-step token's pass cut into submits of 3, then 7 dispatches
    (GpuBackend.submit_chunks; one submit is lavapipe's default), so chunk boundaries fall
    inside layers, between a layer's GEMVs and the attention reading their outputs. `ahead`
    (GpuBackend.encode_ahead, the default): each decode step's command buffer is encoded after
    the step before it was submitted and goes whole, in one submit, with that step's token and
    position written after it was encoded; three prompts in turn, each on its own cache."""
    from pyapp.cli import Runner
    d, refs = smol
    r = Runner(d, "wgpu", split)
    r.tail.submit_chunks, r.tail.encode_ahead = chunks, ahead
    s0 = r.tail.stats["submits"]
    for p, (ids, ref) in refs.items():
        got = generate(r.step_fn(SamplingParams(), len(ids) + 40), ids, 32).ids
        assert got == ref, (split, chunks, ahead, p)
        assert got == torch_ref[p], (split, chunks, ahead, p)
    per_token = (r.tail.stats["submits"] - s0) / (3 * 32)
    if chunks and not ahead:
        assert per_token > 10
    elif chunks:     # the prompt's step and the first decode step chunked, the other 30 steps one each
        from pyapp.gpu.device import chunk_ends
        k = len(chunk_ends(r.tail.step_dispatches, chunks))
        assert k > 10 and per_token == (2 * k + 30) / 32, (k, per_token)
    else:
        assert per_token == 1


@pytest.mark.parametrize("variants", [{"linear": "sgw2"}, {"linear": "sgw4u2", "storage": "u32"}])
def test_smollm2_gpu_variant_greedy(device, smol, torch_ref, variants):
    """The GPU kernels the autotune may pick on a real GPU (lavapipe picks `row`), forced on the
    real f32 weights: 32 greedy ids equal transformers', step by step and pipelined."""
    from pyapp.gpu import GpuBackend
    if "subgroups" not in device.features:
        pytest.skip("no subgroups")
    d, refs = smol
    gb = GpuBackend.load(d, device=device, variants={"norm_wg": 64, "attention": "wg", **variants})
    for p, (ids, _) in refs.items():
        c = gb.new_cache(len(ids) + 40)
        got = generate(lambda t, i: gb.step(ids=t, cache=c, params=SamplingParams(), n=i), ids, 32).ids
        assert got == torch_ref[p], (variants, p)
        assert gb.decode(ids, gb.new_cache(len(ids) + 40), SamplingParams(), 32).ids == torch_ref[p]
        assert device._ahead is None     # pipelined steps encode no step ahead (their readback slots differ)
    assert any("fn ldw(i: u32) -> mat2x4f" in s for s in device._pipelines)   # the 8-value loader ran


def test_smollm2_wgpu_pipelined_generate(smol, torch_ref):
    """What `pyapp generate --backend wgpu` runs at split 0 (Runner.generate: steps submitted
    before the previous token is read) gives transformers' 32 greedy ids. Stopping early
    (should_stop after 5 tokens) and at a stop token leave the cache where the step loop
    leaves it: continuing on that cache from the last token gives the rest of the reference.
    Seeded sampling gives the same ids pipelined as with the step loop forced (the same GPU
    sampler either way, so a consistency check; the greedy ids above are the correctness one)."""
    from pyapp.cli import Runner
    d, refs = smol
    r = Runner(d, "wgpu", 0)
    assert r.pipelined()
    gb = r.tail
    for p, (ids, _) in refs.items():
        ref = torch_ref[p]
        res = r.generate(SamplingParams(), ids, 32, ())
        assert res.ids == ref and res.finish_reason == "length", p
        assert res.time_to_first_token > 0 and res.tokens_per_second > 0
    ids, _ = refs[PROMPTS[0]]
    ref = torch_ref[PROMPTS[0]]
    streamed = []
    c = gb.new_cache(len(ids) + 40)
    res = gb.decode(ids, c, SamplingParams(), 32, on_token=streamed.append,
                    should_stop=lambda: len(streamed) >= 5)
    assert res.ids == streamed == ref[:5] and res.finish_reason == "cancelled"
    assert c.length == len(ids) + 4
    assert gb.decode([ref[4]], c, SamplingParams(), 27).ids == ref[5:]
    k = next(i for i in range(3, 32) if ref[i] not in ref[:i])   # a stop token not seen before
    c = gb.new_cache(len(ids) + 40)
    res = gb.decode(ids, c, SamplingParams(), 32, eos_ids=[ref[k]])
    assert res.ids == ref[:k + 1] and res.finish_reason == "stop"
    assert c.length == len(ids) + k
    assert gb.decode([ref[k]], c, SamplingParams(), 31 - k).ids == ref[k + 1:]
    # the page's rule (steps in flight by time, decode.InFlight): up to 32 in flight, or 2
    from pyapp.edge.session import PIPELINE_AHEAD_S, PIPELINE_DEPTH
    for ahead in (PIPELINE_AHEAD_S, 1e9, 0.0):
        c = gb.new_cache(len(ids) + 40)
        s0 = gb.stats["steps"]
        res = gb.decode(ids, c, SamplingParams(), 32, eos_ids=[ref[k]], depth=PIPELINE_DEPTH, ahead_s=ahead)
        assert res.ids == ref[:k + 1] and c.length == len(ids) + k, ahead
        # steps submitted before the stop token was read: all 32 once the rule allows 32 in
        # flight (1e9 s ahead), never more than 2 past the token read (0 s ahead)
        submitted = gb.stats["steps"] - s0
        if ahead == 1e9:
            assert submitted == 32, submitted
        elif ahead == 0.0:
            assert submitted <= k + 2, (submitted, k)
        assert gb.decode(ids, gb.new_cache(len(ids) + 40), SamplingParams(), 32, depth=PIPELINE_DEPTH,
                         ahead_s=ahead).ids == ref, ahead
    sp = SamplingParams(greedy=False, temperature=0.8, top_k=40, top_p=0.9, seed=7)
    assert r.generate(sp, ids, 24, ()).ids == r.generate(sp, ids, 24, (), pipeline=False).ids


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
