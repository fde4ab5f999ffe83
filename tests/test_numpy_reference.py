"""The numpy executor against PyTorch/transformers on tiny random models.

Tolerance: logits within 1e-4 relative error (max |a-b| / max |b|) at every position.
"""
import numpy as np
import pytest
import torch

from pyapp.numpy_backend import NumpyBackend

RTOL = 1e-4


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefill_and_cached_decode_match_transformers(tiny_dir, arch):
    path, ref = tiny_dir(arch)
    be = NumpyBackend.load(path)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 101, size=13).tolist()
    cache = be.new_cache(64)
    got = be.forward(ids=ids, cache=cache, all_logits=True)
    assert got.shape == (13, 101)
    assert rel_err(got, torch_logits(ref, ids)) < RTOL
    # 16 steps of cached decode, each against a full recompute by transformers
    for _ in range(16):
        ids.append(int(rng.integers(0, 101)))
        step = be.forward(ids=ids[-1:], cache=cache)
        assert rel_err(step[-1], torch_logits(ref, ids)[-1]) < RTOL
    assert cache.length == len(ids)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("split", [(0, 1), (1, 2), (1, 3), (2, 3)])
def test_layer_range_alone_matches_transformers_hidden_states(tiny_dir, arch, split):
    path, ref = tiny_dir(arch)
    a, b = split
    be = NumpyBackend.load(path, start=a, stop=b, embed=(a == 0), head=False)
    ids = np.random.default_rng(a * 7 + b).integers(0, 101, size=9).tolist()
    with torch.no_grad():
        hs = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden_states[i] is the input of layer i (the last one is after the final norm)
    cache = be.new_cache(32, start=a, stop=b)
    if a == 0:
        got = be.forward(ids=ids, cache=cache, start=0, stop=b, head=False)
    else:
        got = be.forward(x=hs[a][0].numpy(), cache=cache, start=a, stop=b, head=False)
    if b < be.model.n_layers:
        assert rel_err(got, hs[b][0].numpy()) < RTOL
    # then the rest of the model from this hidden state reproduces the logits
    rest = NumpyBackend.load(path, start=b, embed=False, head=True)
    logits = rest.forward(x=got, cache=rest.new_cache(32, start=b), start=b, all_logits=True)
    assert rel_err(logits, torch_logits(ref, ids)) < RTOL


def test_bert_embedding_matches_transformers(tiny_dir):
    path, ref = tiny_dir("bert")
    be = NumpyBackend.load(path)
    ids = np.random.default_rng(3).integers(0, 101, size=11).tolist()
    with torch.no_grad():
        h = ref(torch.tensor([ids])).last_hidden_state[0]
    want = torch.nn.functional.normalize(h.mean(0, keepdim=True), dim=-1).numpy()
    got = be.forward(ids=ids)
    assert rel_err(got, want) < RTOL
    for a in range(1, 3):
        head = NumpyBackend.load(path, stop=a, head=False).forward(ids=ids, stop=a, head=False)
        with torch.no_grad():
            hs = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states
        assert rel_err(head, hs[a][0].numpy()) < RTOL
        tail = NumpyBackend.load(path, start=a, embed=False).forward(x=head, start=a)
        assert rel_err(tail, want) < RTOL


def test_fp16_weights_compute_in_f32(tiny_dir, tmp_path):
    import shutil
    from safetensors.numpy import load_file, save_file
    path, ref = tiny_dir("llama")
    d = tmp_path / "m"
    shutil.copytree(path, d)
    save_file({k: v.astype(np.float16) for k, v in load_file(d / "model.safetensors").items()},
              d / "model.f16.safetensors")
    be16 = NumpyBackend.load(d, dtype="f16")
    be32 = NumpyBackend.load(d)
    assert all(w.dtype == np.float32 for w in be16.w.values())
    ids = [5, 17, 33, 2, 99]
    l16 = be16.forward(ids=ids, cache=be16.new_cache(16), all_logits=True)
    l32 = be32.forward(ids=ids, cache=be32.new_cache(16), all_logits=True)
    assert 0 < rel_err(l16, l32) < 1e-2   # rounded weights: close, not identical


def test_cache_overflow_and_bad_ids_are_clear_errors(tiny_dir):
    path, _ = tiny_dir("llama")
    be = NumpyBackend.load(path)
    with pytest.raises(ValueError, match="context overflow"):
        be.forward(ids=list(range(9)), cache=be.new_cache(8))
    with pytest.raises(ValueError, match="out of range"):
        be.forward(ids=[101], cache=be.new_cache(8))
