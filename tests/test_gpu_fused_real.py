"""The fused lowering (pyapp/gpu/lower.py rules, forced with a reduction GEMV variant) on the
real SmolLM2-135M through lavapipe: 32 greedy ids identical to transformers and to the numpy
executor; and the dispatch count of one decode token from `pyapp bench decode --random` (<= 150)."""
from __future__ import annotations

import json

import pytest

from pyapp.decode import generate
from pyapp.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.real_model]
pytest.importorskip("wgpu")

from test_gpu_real import PROMPTS, smol, torch_ref  # noqa: E402,F401  (fixtures: one reference run)

GPU = {"norm_wg": 64, "attention": "wg"}


# the plan of CPU adapters (4 dispatches a layer), and that of GPUs: q/k/v GEMVs, then
# rope + attention in attention_split (5)
PLANS = {"cpu": ({}, 4), "gpu": ({"off": ["fuse_qkv_attention"]}, 5)}


@pytest.mark.parametrize("plan", ["cpu", "gpu"])
@pytest.mark.parametrize("variant", ["wg"])   # sg4: same rules; 19 min for both on 2 cores
def test_smollm2_fused_greedy_identical(smol, torch_ref, device, variant, plan):  # noqa: F811
    from pyapp.gpu import GpuBackend
    from pyapp.gpu.lower import attention_splits
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups on this adapter")
    d, refs = smol
    extra, per_layer = PLANS[plan]
    gb = GpuBackend.load(d, device=device, variants={"linear": variant, **GPU, **extra})
    L = gb.model.n_layers
    for p, (ids, ref) in refs.items():
        c = gb.new_cache(len(ids) + 40)
        per_step = []

        def step(t, n):
            d0 = gb.stats["dispatches"]
            tok = gb.step(ids=t, cache=c, params=SamplingParams(), n=n)
            per_step.append(gb.stats["dispatches"] - d0)
            return tok
        got = generate(step, ids, 32).ids
        assert got == ref, p
        assert got == torch_ref[p], p
        # decode tokens: 4 (5) dispatches per layer + embed, lm head (norm folded), sampler,
        # whether the cache is one 32-key split or several (the merge is in the o-projection)
        assert attention_splits(1, c.capacity)[0] > 1
        assert set(per_step[1:]) == {per_layer * L + 3}
    gb.destroy()


def test_bench_decode_dispatch_count(tmp_path, capsys):
    """The issue's check: `pyapp bench decode --random --linear sg` (SmolLM2's shape; `sg` runs
    as `wg` without subgroups) at a context above 32 (33-token prompt: the 43-key cache is two
    32-key splits) reports <= 150 dispatches per token: 4 per layer + embed, head, sampler = 123
    (183 before the 4-dispatch layer, 364 before the rules); printed. With --submit-chunks 16:64
    each token's 123 dispatches go in 3 submits (16, 64, 43) with --encode-ahead off (on, a step
    after the first goes whole in one), and the report says so."""
    from pyapp.bench import main
    out = tmp_path / "d.json"
    main(["decode", "--random", "--linear", "sg", "--prompt-tokens", "33", "--new-tokens", "2",
          "--submit-chunks", "16:64", "--encode-ahead", "off", "--out", str(out)])
    r = json.loads(out.read_text())["decode"]
    n = r["dispatches_per_token"]
    with capsys.disabled():
        print(f"\nSmolLM2-135M shape, {r['variants']}, context 34-35: {n:.0f} dispatches per decode token")
    assert n <= 150
    assert n == 30 * 4 + 3
    assert r["submit_chunks"] == "first 16 dispatches, then 64 each" and r["submits_per_token"] == 3
    assert r["encode_ahead"] is False
