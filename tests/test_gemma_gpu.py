"""Gemma 3 270M on WebGPU (wgpu-py on lavapipe), the Q4_K_M block file (`--format q4_k_m`: Q5_0,
Q4_K, Q6_K and Q8_0 blocks dequantized in the kernels, the 262,144-row tied head sharded).

The expected ids are transformers' greedy ids on the same GGUF (its own dequantizer, float32),
computed once and cached by tests/test_gemma_model.py's `reference` fixture.  The split is the
server/edge one: layers [0, K) on numpy (its own cache), the hidden state handed to the GPU for
layers [K, 18) and the head; K = 0 runs everything on the GPU from the token ids.

lavapipe decodes this model at about 1 token/s (the 262,144 x 640 head dominates), so each case
runs a few tokens: 5 new tokens at splits 0, 9 and 18, and 3 after a prompt of more than 600
tokens at split 9 (past the 512-token sliding window: local and global layers see different keys,
and the prefill crosses the ring's wrap in chunks of 512).

The default variant on lavapipe is `row`, which takes no fusion rule; `fused` forces the
reduction variants (wg GEMVs, 64-lane norms, wg attention) so the Gemma rules run on the real
weights: offset norms folded into q/k/v and gate/up, gate/up + tanh GELU as one weight pair,
post-norm + residual add in one pass, q_norm + k_norm in one (10 dispatches a sliding layer, 8 a global one)."""
from __future__ import annotations

import pytest

from test_gemma_model import LONG, RAW, TURNS, gemma_dir, reference  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.gpu, pytest.mark.real_model]
pytest.importorskip("wgpu")

N_LAYERS = 18


@pytest.fixture(scope="module")
def parts(gemma_dir):  # noqa: F811
    """(numpy layers [0, 18) without the head, GPU backend of the whole model) on q4_k_m."""
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    nb = NumpyBackend.load(gemma_dir, "q4_k_m", 0, N_LAYERS, embed=True, head=False)
    gb = GpuBackend.load(gemma_dir, "q4_k_m")
    assert {t.dtype for t in gb.tensors.values()} == {"q5_0", "q4_k", "q6_k", "q8_0", "f32"}
    assert len(gb.tensors["model.embed_tokens.weight"].chunks) >= 5    # 262,144 rows, <= 65,535 each
    yield nb, gb
    gb.destroy()


@pytest.fixture(scope="module")
def fused(gemma_dir):  # noqa: F811
    """The whole model on the GPU with the reduction variants forced (the fusion rules on)."""
    from pyapp.gpu import GpuBackend
    gb = GpuBackend.load(gemma_dir, "q4_k_m", variants={"linear": "wg", "norm_wg": 64, "attention": "wg"})
    yield gb
    gb.destroy()


def split_greedy(nb, gb, ids: list[int], n: int, split: int) -> list[int]:
    """n greedy ids (GPU argmax) with layers [0, split) on numpy and the rest on the GPU."""
    cap = len(ids) + n
    head = nb.new_cache(cap, 0, split) if split else None
    tail = gb.new_cache(cap, split, N_LAYERS)

    def step(step_ids):
        if not split:
            return gb.step(ids=step_ids, cache=tail)
        x = nb.forward(ids=step_ids, cache=head, start=0, stop=split, head=False)
        return gb.step(x=x, cache=tail, start=split)
    out = [step(ids)]
    while len(out) < n:
        out.append(step([out[-1]]))
    tail.destroy()
    return out


@pytest.mark.parametrize("split,prompt", [(0, f"raw:{RAW[0]}"), (9, f"turn:{TURNS[0]}"), (18, f"raw:{RAW[2]}")])
def test_greedy_ids_identical_to_transformers(parts, reference, split, prompt):  # noqa: F811
    nb, gb = parts
    want = reference["greedy"][prompt][0][:5]
    assert split_greedy(nb, gb, reference["prompts"][prompt], 5, split) == want


def test_prompt_past_the_sliding_window_at_split_9(parts, reference):  # noqa: F811
    nb, gb = parts
    ids = reference["prompts"]["long"]
    assert len(ids) > 600
    assert split_greedy(nb, gb, ids, 3, 9) == reference["greedy"]["long"][0][:3]


@pytest.mark.parametrize("split,prompt", [(0, f"raw:{RAW[1]}"), (9, f"turn:{TURNS[1]}")])
def test_greedy_ids_fused_rules_identical_to_transformers(parts, fused, reference, split, prompt):  # noqa: F811
    nb, _gb = parts
    ids = reference["prompts"][prompt]
    want = reference["greedy"][prompt][0][:4]
    assert split_greedy(nb, fused, ids, 4, split) == want
    # the rules fired: a decode token's 18 layers (15 sliding, 3 global) in 15 * 10 + 3 * 8 dispatches
    cache = fused.new_cache(len(ids) + 8, 0, N_LAYERS)
    assert fused._plan(1, cache, 0, N_LAYERS, False, False, False, False)[1] == 15 * 10 + 3 * 8
    cache.destroy()
