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
