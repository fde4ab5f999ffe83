"""The fused lowering (pyapp/gpu/lower.py rules, forced with a reduction GEMV variant) on the
real SmolLM2-135M through lavapipe: 32 greedy ids identical to transformers and to the numpy
executor; and the dispatch count of one decode token from `pyapp bench decode --random`."""
from __future__ import annotations

import json

import pytest

from pyapp.decode import generate
from pyapp.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.real_model]
pytest.importorskip("wgpu")

from test_gpu_real import PROMPTS, smol, torch_ref  # noqa: E402,F401  (fixtures: one reference run)

GPU = {"norm_wg": 64, "attention": "wg"}


@pytest.mark.parametrize("variant", ["wg"])   # sg4: same rules; 19 min for both on 2 cores
def test_smollm2_fused_greedy_identical(smol, torch_ref, device, variant):  # noqa: F811
    from pyapp.gpu import GpuBackend
    from pyapp.gpu.lower import attention_splits
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups on this adapter")
    d, refs = smol
    gb = GpuBackend.load(d, device=device, variants={"linear": variant, **GPU})
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
        # decode tokens: 5 dispatches per layer + embed, lm head (norm folded), sampler; + one
        # merge per layer where the cache holds more than one 32-key split
        ns, _sl = attention_splits(1, c.capacity)
        assert set(per_step[1:]) == {5 * L + 3 + (L if ns > 1 else 0)}
    gb.destroy()


def test_bench_decode_dispatch_count(tmp_path, capsys):
    """`pyapp bench decode --random --linear wg` (SmolLM2's shape) with a cache of one 32-key
    split: 153 dispatches per token (364 before the rules: 12 per layer); printed. (A longer
    cache adds one attention_merge per layer: 183.)"""
    from pyapp.bench import main
    out = tmp_path / "d.json"
    main(["decode", "--random", "--linear", "wg", "--prompt-tokens", "8", "--new-tokens", "3",
          "--out", str(out)])
    r = json.loads(out.read_text())["decode"]
    n = r["dispatches_per_token"]
    with capsys.disabled():
        print(f"\nSmolLM2-135M shape, wg on {r['variants']}: {n:.0f} dispatches per decode token")
    assert n == 30 * 5 + 3
