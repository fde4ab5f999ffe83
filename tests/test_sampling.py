import numpy as np
import pytest

from pyapp.sampling import SamplingParams, hash32, sample_numpy, uniform


def test_hash_is_a_32_bit_mix():
    vals = {hash32(i) for i in range(10000)}
    assert len(vals) == 10000 and max(vals) < 2 ** 32
    assert all(0 <= uniform(s, n) < 1 for s in range(5) for n in range(100))


def test_greedy_is_argmax_and_ties_go_to_the_lower_id():
    logits = np.array([0.1, 3.0, 3.0, -1.0], np.float32)
    assert sample_numpy(logits, SamplingParams(), 0) == 1


def test_top_k_1_equals_greedy_and_seeds_reproduce():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=500).astype(np.float32)
    p1 = SamplingParams(greedy=False, temperature=0.8, top_k=1, seed=3)
    assert all(sample_numpy(logits, p1, n) == int(np.argmax(logits)) for n in range(20))
    p = SamplingParams(greedy=False, temperature=1.0, top_p=0.9, seed=11)
    a = [sample_numpy(logits, p, n) for n in range(50)]
    assert a == [sample_numpy(logits, p, n) for n in range(50)]
    assert len(set(a)) > 5


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    p = SamplingParams(greedy=False, temperature=1.0, seed=5)
    counts = np.bincount([sample_numpy(logits, p, n) for n in range(6000)], minlength=3) / 6000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.03)
    # top_p=0.6 keeps {0.5, 0.3} renormalised
    p = SamplingParams(greedy=False, temperature=1.0, top_p=0.6, seed=5)
    counts = np.bincount([sample_numpy(logits, p, n) for n in range(6000)], minlength=3) / 6000
    assert counts[2] == 0 and abs(counts[0] - 0.625) < 0.03


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(top_p=0), dict(top_k=-1)])
def test_bad_params_raise(kw):
    with pytest.raises(ValueError):
        SamplingParams(greedy=False, **kw)


def test_exp_q_is_close_to_exp_and_matches_the_wgsl_constants():
    import re
    from importlib import resources
    from pyapp.sampling import exp_q
    x = -np.linspace(0, 80, 20001).astype(np.float32)
    assert np.abs(exp_q(x) / np.exp(x.astype(np.float64)) - 1).max() < 1e-5
    assert exp_q(np.float32(0)) == 1 and exp_q(np.float32(-200)) == 0 and exp_q(np.float32(-np.inf)) == 0
    src = resources.files("pyapp.kernels").joinpath("sample.wgsl").read_text()
    ks = [float(k) for k in re.findall(r"q = q \* select\(1\.0, ([0-9.]+),", src)]
    assert ks == [float(np.float32(2.0 ** (2.0 ** -b))) for b in range(1, 24)]


def test_draws_from_the_whole_kept_set_in_id_order():
    # flat logits: every id is kept and equally likely (the old GPU limit was the 64 most likely)
    p = SamplingParams(greedy=False, temperature=1.0, top_p=0.95, seed=1)
    picks = [sample_numpy(np.zeros(1000, np.float32), p, n) for n in range(400)]
    assert max(picks) > 900 and len(set(picks)) > 300
    # the CDF is laid out in id order: u below the first kept id's mass picks it
    logits = np.log(np.array([0.2, 0.5, 0.3], np.float32))
    p = SamplingParams(greedy=False, temperature=1.0, seed=5)
    from pyapp.sampling import uniform
    for n in range(50):
        u = uniform(5, n)
        want = 0 if u < 0.2 - 1e-6 else 1 if 0.2 + 1e-6 < u < 0.7 - 1e-6 else 2 if u > 0.7 + 1e-6 else None
        if want is not None:
            assert sample_numpy(logits, p, n) == want
    # top_k keeps ties with the k-th largest
    logits = np.array([1.0, 3.0, 2.0, 2.0, 0.0], np.float32)
    p = SamplingParams(greedy=False, temperature=1.0, top_k=2, seed=0)
    assert {sample_numpy(logits, p, n) for n in range(200)} == {1, 2, 3}
