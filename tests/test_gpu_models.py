"""Whole tiny models through the WebGPU backend (wgpu-py on lavapipe) against the
numpy executor: greedy and seeded generation, splits, fp16 weights, embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from pyapp.decode import generate
from pyapp.numpy_backend import NumpyBackend
from pyapp.sampling import SamplingParams, sample_numpy

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")

PROMPTS = [[1, 5, 17, 33, 2, 99, 64], [1, 100], [7]]


def numpy_step(nb, cache, sp, split=None, gpu=None, gcache=None):
    def step(ids, n):
        if split is None:
            logits = nb.forward(ids=ids, cache=cache)
            return sample_numpy(logits[-1], sp, n)
        x = nb.forward(ids=ids, cache=cache, stop=split, head=False)
        return gpu.step(x=x, cache=gcache, params=sp, n=n)
    return step


def gpu_step(gb, cache, sp):
    return lambda ids, n: gb.step(ids=ids, cache=cache, params=sp, n=n)


def save_f16(src, dst):
    """model.f16.safetensors next to model.safetensors (all float tensors to f16)."""
    import shutil

    from safetensors.numpy import load_file, save_file
    shutil.copy(src / "config.json", dst / "config.json")
    t = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in t.items()}, str(dst / "model.f16.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generation_matches_numpy(tiny_dir, device, arch):
    d, _ = tiny_dir(arch)
    nb = NumpyBackend.load(d)
    gb = __import__("pyapp.gpu", fromlist=["GpuBackend"]).GpuBackend.load(d, device=device)
    sp = SamplingParams()
    for prompt in PROMPTS:
        ref = generate(numpy_step(nb, nb.new_cache(128), sp), prompt, 32)
        got = generate(gpu_step(gb, gb.new_cache(128), sp), prompt, 32)
        assert got.ids == ref.ids
    # crossings: natively 0; dispatches per decode step O(layers)
    assert gb.stats["plans_built"] <= 2 * len(PROMPTS) + 2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_and_all_logits(tiny_dir, device, arch):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir(arch)
    nb, gb = NumpyBackend.load(d), GpuBackend.load(d, device=device)
    c1, c2 = nb.new_cache(64), gb.new_cache(64)
    ids = PROMPTS[0]
    r, g = nb.forward(ids=ids, cache=c1, all_logits=True), gb.forward(ids=ids, cache=c2, all_logits=True)
    assert np.abs(r - g).max() / np.abs(r).max() < 1e-5
    r, g = nb.forward(ids=[3], cache=c1), gb.forward(ids=[3], cache=c2)
    assert g.shape == (1, nb.model.vocab)
    assert np.abs(r - g).max() / np.abs(r).max() < 1e-5


def test_seeded_sampling_matches_numpy(tiny_dir, device):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    nb, gb = NumpyBackend.load(d), GpuBackend.load(d, device=device)
    for sp in (SamplingParams(greedy=False, temperature=0.9, top_k=20, top_p=0.9, seed=7),
               SamplingParams(greedy=False, temperature=1.2, top_k=0, top_p=0.6, seed=3)):
        ref = generate(numpy_step(nb, nb.new_cache(128), sp), PROMPTS[0], 24)
        got = generate(gpu_step(gb, gb.new_cache(128), sp), PROMPTS[0], 24)
        assert got.ids == ref.ids


@pytest.mark.parametrize("split", [1, 2, 3])
def test_split_numpy_then_gpu(tiny_dir, device, split):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    nb = NumpyBackend.load(d)
    gb = GpuBackend.load(d, start=split, device=device)
    sp = SamplingParams()
    ref = generate(numpy_step(nb, nb.new_cache(128), sp), PROMPTS[0], 20)
    got = generate(numpy_step(nb, nb.new_cache(128, 0, split), sp, split, gb,
                              gb.new_cache(128, split, nb.model.n_layers)), PROMPTS[0], 20)
    assert got.ids == ref.ids


def test_f16_weights(tiny_dir, device, tmp_path):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    save_f16(d, tmp_path)
    nb = NumpyBackend.load(tmp_path, dtype="f16")
    gb = GpuBackend.load(tmp_path, dtype="f16", device=device)
    assert gb.tensors[next(iter(gb.tensors))].dtype == "f16"
    c1, c2 = nb.new_cache(64), gb.new_cache(64)
    r, g = nb.forward(ids=PROMPTS[0], cache=c1), gb.forward(ids=PROMPTS[0], cache=c2)
    assert np.abs(r - g).max() / np.abs(r).max() < 1e-5


def test_bert_embedding(tiny_dir, device):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("bert")
    nb, gb = NumpyBackend.load(d), GpuBackend.load(d, device=device)
    for ids in ([3, 7, 8, 9, 4], list(range(1, 30))):
        r, g = nb.forward(ids=ids), gb.forward(ids=ids)
        cos = float((r * g).sum() / np.linalg.norm(r) / np.linalg.norm(g))
        assert cos >= 0.99999 and np.abs(r - g).max() < 1e-5


def test_browser_style_construction(tiny_dir, device):
    """Model without weights + weight_layout/write_weight in pieces (as the browser streams)."""
    from safetensors import safe_open

    from pyapp.gpu import GpuBackend
    from pyapp.weightfile import load_model_dir
    d, _ = tiny_dir("llama")
    model = load_model_dir(d)
    gb = GpuBackend(device, model, 0, None, None, None, "f32")       # shapes from the config
    with safe_open(str(d / "model.safetensors"), framework="numpy") as f:
        for name, nbytes in gb.weight_layout():
            raw = np.ascontiguousarray(f.get_tensor(name), np.float32).tobytes()
            assert len(raw) == nbytes
            for off in range(0, nbytes, 1000):                       # 1000-byte "Range" pieces
                gb.write_weight(name, off, memoryview(raw)[off:off + 1000])
    nb = NumpyBackend.load(d)
    sp = SamplingParams()
    ref = generate(numpy_step(nb, nb.new_cache(64), sp), PROMPTS[0], 10)
    got = generate(gpu_step(gb, gb.new_cache(64), sp), PROMPTS[0], 10)
    assert got.ids == ref.ids


def test_errors_surface(tiny_dir, device):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    gb = GpuBackend.load(d, device=device, max_tokens=8)
    c = gb.new_cache(16)
    with pytest.raises(ValueError, match="out of range"):
        gb.step(ids=[10 ** 6], cache=c)
    with pytest.raises(ValueError, match="max_tokens"):
        gb.forward(ids=list(range(9)), cache=c)          # step() would prefill in chunks
    gb.step(ids=list(range(8)), cache=c)
    gb.step(ids=[1] * 8, cache=c)
    with pytest.raises(ValueError, match="overflow"):
        gb.step(ids=[1], cache=c)


def test_long_prompt_prefilled_in_chunks(tiny_dir, device):
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    nb = NumpyBackend.load(d)
    gb = GpuBackend.load(d, device=device, max_tokens=8)
    prompt = [(i * 37) % 100 + 1 for i in range(27)]
    sp = SamplingParams()
    ref = generate(numpy_step(nb, nb.new_cache(64), sp), prompt, 8)
    got = generate(gpu_step(gb, gb.new_cache(64), sp), prompt, 8)
    assert got.ids == ref.ids
    # and with a hidden state from a numpy head part (split 1)
    gs = GpuBackend.load(d, start=1, device=device, max_tokens=8)
    got = generate(numpy_step(nb, nb.new_cache(64, 0, 1), sp, 1, gs, gs.new_cache(64, 1, 3)), prompt, 8)
    assert got.ids == ref.ids


def _live_buffers():
    import gc

    from wgpu import diagnostics
    gc.collect()
    return diagnostics.object_counts.get_dict()["Buffer"]["count"]


@pytest.mark.parametrize("end", ["dropped", "destroyed"])
def test_kv_cache_buffers_freed_after_generate(tiny_dir, device, end):
    """Every generate() gets a fresh cache; once it is dropped (or destroyed) its K/V buffers
    are gone: the live wgpu buffers (wgpu-py's own object count) stay flat over 6 runs."""
    from pyapp.gpu import GpuBackend
    d, _ = tiny_dir("llama")
    gb = GpuBackend.load(d, device=device)
    sp = SamplingParams()
    kv = 2 * gb.model.n_layers

    def one():
        c = gb.new_cache(64)
        ids = generate(gpu_step(gb, c, sp), PROMPTS[0], 6).ids
        if end == "destroyed":
            c.destroy()
        return ids

    first = one()
    base = _live_buffers()
    for _ in range(6):
        assert one() == first
    assert _live_buffers() == base
    c = gb.new_cache(64)
    assert _live_buffers() == base + kv          # the count does see a cache's buffers
    del c
    assert _live_buffers() == base
