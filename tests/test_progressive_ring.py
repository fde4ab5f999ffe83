"""KV hand-over of sliding-window layers (Gemma 3's ring caches): a tiny random Gemma 3 with a
4-key window (3 local layers + 1 global), 24 prompt tokens so every ring has wrapped, layers
moved one at a time between a numpy 'server' cache [0, K) and a GPU 'edge' cache [K, N) (wgpu-py
on lavapipe) through PKV1 frames, down to 0 and back up. The expected ids are transformers'
greedy ids (torch, its own cache)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")
N = 4


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(3)
    cfg = tf.Gemma3TextConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=N,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                              sliding_window=4, max_position_embeddings=128, bos_token_id=1,
                              eos_token_id=2, pad_token_id=0,
                              layer_types=["sliding_attention"] * 3 + ["full_attention"])
    model = tf.Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    d = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(d, safe_serialization=True)
    return d, model


def _frame(cache, layer, model) -> bytes:
    from pyapp.kvwire import KVHeader

    p0, k, v = cache.read_layer(layer)
    h = KVHeader(layer, p0, cache.length, model.n_kv_heads, model.head_dim)
    return h.pack() + bytes(memoryview(k).cast("B")) + bytes(memoryview(v).cast("B"))


def _take(cache, frame, as_numpy):
    from pyapp.kvwire import HEADER, parse_header

    h = parse_header(frame)
    k, v = (frame[HEADER.size + j * h.part_bytes:HEADER.size + (j + 1) * h.part_bytes] for j in (0, 1))
    if as_numpy:
        k, v = (np.frombuffer(a, "<f4").reshape(h.n_kv_heads, h.positions, h.head_dim) for a in (k, v))
    cache.write_layer(h.layer, h.p0, k, v)
    return h


def test_ring_layers_hand_over_numpy_gpu_both_ways(tiny_gemma):
    from test_real_models import torch_greedy

    from pyapp.gpu.backend import GpuBackend
    from pyapp.numpy_backend import NumpyBackend

    d, ref = tiny_gemma
    rng = np.random.default_rng(7)
    prompt = [int(i) for i in rng.integers(3, 101, 24)]
    want = torch_greedy(ref, prompt, 14)
    nb = NumpyBackend.load(d)
    gb = GpuBackend.load(d, max_positions=64, max_tokens=32)
    server = nb.new_cache(64, 0, N)     # layers [0, K), grown and shrunk by layer
    edge = gb.new_cache(64, 0, N)       # every layer; [K, N) in use
    split, out, sizes = N, [], {}
    plan = [4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 2, 0, 3, 3]

    def step(ids):
        if split == 0:
            server.length += len(ids)
            return gb.step(ids=ids, cache=edge)
        x = nb.forward(ids=ids, cache=server, start=0, stop=split, head=False)
        return gb.step(x=x, cache=edge, start=split)

    for i, target in enumerate(plan):
        while split > target:       # to the edge: numpy ring -> GPU ring
            split -= 1
            h = _take(edge, _frame(server, split, nb.model), as_numpy=False)
            sizes[split] = h.positions
            server.drop_layer(split)
        while split < target:       # to the server: GPU ring -> numpy ring
            server.add_layer(split)
            _take(server, _frame(edge, split, nb.model), as_numpy=True)
            split += 1
        out.append(step(prompt if i == 0 else [out[-1]]))
    assert out == want
    # a window layer hands over its last W - 1 = 3 positions, the global layer all of them
    assert sizes[0] == sizes[1] == sizes[2] == 3 and sizes[3] == len(prompt) + 9
    # layers 0..2 came back to the server before step 12 with positions 32..34 only: a rewind
    # whose next query would need position 30 or 31 is refused clearly, a shorter one is fine
    assert server.length == len(prompt) + 13
    with pytest.raises(ValueError, match="handed over"):
        server.truncate(server.length - 4)
    server.truncate(server.length - 1)
    server.truncate(0)
