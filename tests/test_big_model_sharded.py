"""Sharded GPU tensors (lavapipe, wgpu-py): with a binding limit forced down to half the smallest matrix every
matrix of the model is split by rows over several buffers and bindings (token tables, the LM
head over a vocabulary split, position tables, every linear, GPT-2's transposed Conv1D weights
over their input rows), in every format with a WebGPU loader.

References: the same model unsharded on the same adapter (logits bit for bit: a sharded
kernel adds in the same order), and the numpy executor (relative error <= 1e-5) — greedy ids
of 8 new tokens equal both."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pyapp.numpy_backend import NumpyBackend
from pyapp.synth import synth

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")
from test_gpu_kernels import relerr  # noqa: E402  (the lavapipe `device` fixture is in conftest)

CONFIGS = {
    "llama-untied": dict(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-tied": dict(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", vocab_size=97, n_embd=64, n_layer=2, n_head=2, n_positions=64),
}
PROMPT = [3, 96, 17, 50, 42, 8, 8, 77, 20]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(name, format) -> synthesized model folder, written once per module."""
    import os

    root = tmp_path_factory.mktemp("sharded")
    old = os.environ.get("PYAPP_MODELS_DIR")
    os.environ["PYAPP_MODELS_DIR"] = str(root / "store")
    made = {}

    def get(name, fmt):
        if (name, fmt) not in made:
            cfg = root / f"{name}.json"
            cfg.write_text(json.dumps(CONFIGS[name]))
            made[name, fmt] = synth(f"{name}-{fmt}", cfg, dtype=fmt, seed=11)
        return made[name, fmt]
    yield get
    if old is None:
        os.environ.pop("PYAPP_MODELS_DIR", None)
    else:
        os.environ["PYAPP_MODELS_DIR"] = old


def gpu(device, path, fmt, max_binding=None):
    from pyapp.gpu import GpuBackend
    return GpuBackend.load(path, fmt, device=device, autotune=False, variants={"linear": "row"},
                           max_tokens=16, max_positions=32, max_binding=max_binding)


def max_binding(be) -> int:
    """A limit under which every matrix of `be` splits: half the smallest matrix, but at
    least one row of any matrix and any vector (those cannot be split)."""
    mats = [t for t in be.tensors.values() if len(t.shape) == 2]
    least = max([t.nbytes // t.shape[0] for t in mats] + [t.nbytes for t in be.tensors.values()
                                                             if len(t.shape) == 1])
    return -(-max(least, min(t.nbytes for t in mats) // 2) // 4) * 4


def run(be, cache_of):
    """All-position logits of the prompt, then 8 greedy steps: (logits, ids)."""
    cache = cache_of(be)
    logits = be.forward(ids=PROMPT, cache=cache, all_logits=True)
    ids, x = [], [int(logits[-1].argmax())]
    for _ in range(8):
        ids.append(x[0])
        x = [int(be.forward(ids=x, cache=cache)[-1].argmax())]
    return logits, ids


CASES = [(n, f) for n in ("llama-untied", "gpt2") for f in ("f32", "f16", "q4_1", "q8_0")]
CASES += [("llama-tied", "f32"), ("llama-tied", "q4_1")]     # one table: gather and head


@pytest.mark.parametrize("name,fmt", CASES)
def test_every_matrix_sharded_same_logits(device, models, name, fmt):
    path = models(name, fmt)
    whole = gpu(device, path, fmt)
    assert all(len(t.chunks) == 1 for t in whole.tensors.values())
    want, want_ids = run(whole, lambda be: be.new_cache(32))
    limit = max_binding(whole)
    whole.destroy()
    sharded = gpu(device, path, fmt, limit)
    mats = {n: t for n, t in sharded.tensors.items() if len(t.shape) == 2}
    assert mats and all(len(t.chunks) > 1 for t in mats.values()), \
        {n: len(t.chunks) for n, t in mats.items()}
    got, got_ids = run(sharded, lambda be: be.new_cache(32))
    sharded.destroy()
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    nb = NumpyBackend.load(path, fmt)
    ref, ref_ids = run(nb, lambda be: be.new_cache(32))
    assert relerr(got, ref) <= 1e-5
    assert got_ids == want_ids == ref_ids


def test_split_step_sharded(device, models):
    """Split at layer 1: the GPU part (layer 1 + head) sharded, fed the numpy part's hidden
    state; GPU-sampled greedy ids equal numpy's."""
    from pyapp.gpu import GpuBackend
    from pyapp.sampling import SamplingParams

    path = models("llama-untied", "q8_0")
    nb = NumpyBackend.load(path, "q8_0")
    head = NumpyBackend.load(path, "q8_0", 0, 1, embed=True, head=False)
    g = GpuBackend.load(path, "q8_0", start=1, device=device, autotune=False, max_tokens=16,
                        max_positions=32, max_binding=1024)
    assert all(len(t.chunks) > 1 for t in g.tensors.values() if len(t.shape) == 2)
    hc, gc, ref_c = head.new_cache(32, 0, 1), g.new_cache(32), nb.new_cache(32)
    x, ids, ref = PROMPT, [], []
    r = PROMPT
    for n in range(6):
        ids.append(g.step(x=head.forward(ids=x, cache=hc, stop=1, head=False), cache=gc,
                          params=SamplingParams(), n=n))
        ref.append(int(nb.forward(ids=r, cache=ref_c)[-1].argmax()))
        x, r = [ids[-1]], [ref[-1]]
    assert ids == ref


@pytest.mark.parametrize("fmt", ["f32", "q8_0"])
def test_sharded_with_the_reduction_variant(device, models, fmt):
    """The `wg` GEMV, where the fusion rules fold norms and residual adds into unsharded GEMVs:
    a sharded weight is never fused (one GEMV per chunk); logits within 1e-5 of numpy, ids equal."""
    from pyapp.gpu import GpuBackend
    path = models("llama-untied", fmt)
    probe = gpu(device, path, fmt)
    limit = max_binding(probe)
    probe.destroy()
    g = GpuBackend.load(path, fmt, device=device, autotune=False, variants={"linear": "wg"},
                        max_tokens=16, max_positions=32, max_binding=limit)
    assert all(len(t.chunks) > 1 for t in g.tensors.values() if len(t.shape) == 2)
    got, got_ids = run(g, lambda be: be.new_cache(32))
    g.destroy()
    ref, ref_ids = run(NumpyBackend.load(path, fmt), lambda be: be.new_cache(32))
    assert relerr(got, ref) <= 1e-5 and got_ids == ref_ids
