"""OpenAI-style routes over a real uvicorn, with httpx and with the official `openai` client."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from test_server_util import TINY_BERT, TINY_LLAMA, tiny_server, tiny_store  # noqa: F401


@pytest.fixture(scope="module")
def llama_ref(tiny_store):
    from pyapp.numpy_backend import NumpyBackend

    return NumpyBackend.load(tiny_store / TINY_LLAMA)


def greedy_ids(be, prompt, n, eos=(2,)):
    from pyapp.decode import generate

    cache = be.new_cache(len(prompt) + n)
    return generate(lambda ids, i: int(np.argmax(be.forward(ids=ids, cache=cache)[-1])), prompt, n,
                    eos).ids


def text_of(ids):
    """The tiny word-level tokenizer's decode (specials skipped)."""
    names = {98: "user", 99: "assistant", 100: "system"}
    return " ".join(names.get(i, f"w{i}") for i in ids if i > 2)


def post(srv, path, body, **kw):
    return httpx.post(srv.url + path, json=body, timeout=60, **kw)


def test_models_list(tiny_server):
    d = httpx.get(tiny_server.url + "/v1/models").json()
    assert d["object"] == "list"
    ids = {m["id"]: m for m in d["data"]}
    assert set(ids) == {TINY_LLAMA, TINY_BERT}
    assert ids[TINY_LLAMA]["object"] == "model" and ids[TINY_LLAMA]["n_layers"] == 3
    assert httpx.get(tiny_server.url + f"/v1/models/{TINY_BERT}").json()["kind"] == "encoder"
    assert httpx.get(tiny_server.url + "/v1/models/nope").status_code == 404


@pytest.mark.parametrize("prompt", [[5, 17, 33], "w5 w17 w33", ["w5 w17 w33"], [[5, 17, 33]]])
def test_greedy_completion_equals_numpy(tiny_server, llama_ref, prompt):
    want = greedy_ids(llama_ref, [5, 17, 33], 12)
    r = post(tiny_server, "/v1/completions", {"model": TINY_LLAMA, "prompt": prompt, "max_tokens": 12,
                                              "temperature": 0})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and d["model"] == TINY_LLAMA
    assert d["pyapp"]["ids"] == want
    assert d["choices"][0]["text"] == text_of(want)
    assert d["choices"][0]["finish_reason"] == ("stop" if want[-1] == 2 else "length")
    assert d["usage"] == {"prompt_tokens": 3, "completion_tokens": len(want), "total_tokens": 3 + len(want)}


def _sse(r):
    events = []
    for line in r.text.split("\n\n"):
        if line.startswith("data: "):
            events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_completion_equals_non_streaming(tiny_server):
    body = {"model": TINY_LLAMA, "prompt": "w9 w4 w77 w3", "max_tokens": 10, "temperature": 0}
    full = post(tiny_server, "/v1/completions", body).json()
    r = post(tiny_server, "/v1/completions", {**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = _sse(r)
    assert "".join(e["choices"][0]["text"] for e in ev) == full["choices"][0]["text"]
    assert ev[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert all(e["object"] == "text_completion" and e["id"] == ev[0]["id"] for e in ev)


def test_sampling_is_seeded(tiny_server):
    body = {"model": TINY_LLAMA, "prompt": [5, 6], "max_tokens": 8, "temperature": 1.5, "seed": 7}
    a = post(tiny_server, "/v1/completions", body).json()["pyapp"]["ids"]
    b = post(tiny_server, "/v1/completions", body).json()["pyapp"]["ids"]
    c = post(tiny_server, "/v1/completions", {**body, "seed": 8}).json()["pyapp"]["ids"]
    assert a == b and a != c


def test_stop_strings(tiny_server, llama_ref):
    want = greedy_ids(llama_ref, [5, 17, 33], 12)
    words = text_of(want).split(" ")
    if len(words) < 3:
        pytest.skip("reference too short")
    stop = words[2]
    text = text_of(want)
    body = {"model": TINY_LLAMA, "prompt": [5, 17, 33], "max_tokens": 12, "temperature": 0, "stop": stop}
    d = post(tiny_server, "/v1/completions", body).json()
    assert d["choices"][0]["text"] == text[:text.find(stop)]
    assert d["choices"][0]["finish_reason"] == "stop"
    ev = _sse(post(tiny_server, "/v1/completions", {**body, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in ev) == text[:text.find(stop)]


def test_chat_completion(tiny_server, llama_ref):
    msgs = [{"role": "system", "content": "w10 w11"}, {"role": "user", "content": [{"type": "text", "text": "w12"}]}]
    # the tiny template: "<s> role content </s> " per message, then "<s> assistant "
    prompt = [1, 100, 10, 11, 2, 1, 98, 12, 2, 1, 99]
    want = greedy_ids(llama_ref, prompt, 9)
    d = post(tiny_server, "/v1/chat/completions", {"model": TINY_LLAMA, "messages": msgs, "max_tokens": 9,
                                                   "temperature": 0}).json()
    assert d["object"] == "chat.completion"
    assert d["pyapp"]["ids"] == want and d["usage"]["prompt_tokens"] == len(prompt)
    assert d["choices"][0]["message"] == {"role": "assistant", "content": text_of(want), "refusal": None,
                                          "annotations": []}
    r = post(tiny_server, "/v1/chat/completions", {"model": TINY_LLAMA, "messages": msgs, "max_tokens": 9,
                                                   "temperature": 0, "stream": True,
                                                   "stream_options": {"include_usage": True}})
    ev = _sse(r)
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in ev if e["choices"]) == text_of(want)
    assert ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == len(want)


def test_embeddings_equal_numpy(tiny_server, tiny_store):
    from pyapp.numpy_backend import NumpyBackend

    be = NumpyBackend.load(tiny_store / TINY_BERT)
    d = post(tiny_server, "/v1/embeddings", {"model": TINY_BERT, "input": ["w5 w6 w7", "w9"]}).json()
    assert d["object"] == "list" and len(d["data"]) == 2
    for item, ids in zip(d["data"], ([1, 5, 6, 7, 2], [1, 9, 2])):
        want = be.forward(ids=ids)[0]
        assert item["object"] == "embedding"
        assert np.array_equal(np.asarray(item["embedding"], np.float32), want)
    assert d["usage"]["prompt_tokens"] == 8
    import base64

    d = post(tiny_server, "/v1/embeddings", {"model": TINY_BERT, "input": [1, 5, 2],
                                             "encoding_format": "base64"}).json()
    v = np.frombuffer(base64.b64decode(d["data"][0]["embedding"]), "<f4")
    assert np.array_equal(v, be.forward(ids=[1, 5, 2])[0])


def test_openai_client(tiny_server, llama_ref, tiny_store):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {TINY_LLAMA, TINY_BERT}
    want = greedy_ids(llama_ref, [5, 17, 33], 6)
    c = client.completions.create(model=TINY_LLAMA, prompt="w5 w17 w33", max_tokens=6, temperature=0)
    assert c.choices[0].text == text_of(want)
    stream = client.completions.create(model=TINY_LLAMA, prompt="w5 w17 w33", max_tokens=6, temperature=0,
                                       stream=True)
    assert "".join(ch.choices[0].text for ch in stream) == text_of(want)
    ch = client.chat.completions.create(model=TINY_LLAMA, messages=[{"role": "user", "content": "w12"}],
                                        max_tokens=5, temperature=0)
    assert ch.choices[0].message.role == "assistant" and isinstance(ch.choices[0].message.content, str)
    parts = list(client.chat.completions.create(model=TINY_LLAMA, messages=[{"role": "user", "content": "w12"}],
                                                max_tokens=5, temperature=0, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == ch.choices[0].message.content
    e = client.embeddings.create(model=TINY_BERT, input=["w5 w6 w7"])  # base64 on the wire
    from pyapp.numpy_backend import NumpyBackend

    want_e = NumpyBackend.load(tiny_store / TINY_BERT).forward(ids=[1, 5, 6, 7, 2])[0]
    assert np.allclose(e.data[0].embedding, want_e, atol=0, rtol=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="w5", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TINY_LLAMA, prompt="w5", max_tokens=10**6)


def test_bad_openai_requests(tiny_server):
    u = "/v1/completions"
    cases = [
        (u, {"prompt": "w5"}, 400),
        (u, {"model": "nope", "prompt": "w5"}, 404),
        (u, {"model": TINY_BERT, "prompt": "w5"}, 400),
        (u, {"model": TINY_LLAMA}, 400),
        (u, {"model": TINY_LLAMA, "prompt": ""}, 400),
        (u, {"model": TINY_LLAMA, "prompt": []}, 400),
        (u, {"model": TINY_LLAMA, "prompt": [5, 101]}, 400),
        (u, {"model": TINY_LLAMA, "prompt": [5, "x"]}, 400),
        (u, {"model": TINY_LLAMA, "prompt": [5] * 128}, 400),          # context overflow
        (u, {"model": TINY_LLAMA, "prompt": "w5", "max_tokens": 0}, 400),
        (u, {"model": TINY_LLAMA, "prompt": "w5", "max_tokens": 5000}, 400),
        (u, {"model": TINY_LLAMA, "prompt": "w5", "temperature": -1}, 400),
        (u, {"model": TINY_LLAMA, "prompt": "w5", "temperature": "hot"}, 400),
        (u, {"model": TINY_LLAMA, "prompt": "w5", "n": 2}, 400),
        (u, {"model": TINY_LLAMA, "prompt": "w5", "stop": [""]}, 400),
        ("/v1/chat/completions", {"model": TINY_LLAMA, "messages": []}, 400),
        ("/v1/chat/completions", {"model": TINY_LLAMA, "messages": [{"content": "x"}]}, 400),
        ("/v1/chat/completions", {"model": TINY_LLAMA, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
        ("/v1/chat/completions", {"model": TINY_BERT, "messages": [{"role": "user", "content": "x"}]}, 400),
        ("/v1/embeddings", {"model": TINY_LLAMA, "input": "w5"}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": ""}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": 5}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": [[1, 500]]}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": [[1] * 129]}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": "w5", "encoding_format": "int8"}, 400),
        ("/v1/embeddings", {"model": TINY_BERT, "input": "w5 " * 30000}, 413),
    ]
    for path, body, status in cases:
        r = post(tiny_server, path, body)
        assert r.status_code == status, (path, body, r.status_code, r.text)
        assert r.json()["error"]["message"]
    r = httpx.post(tiny_server.url + u, content=b"nonsense", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(tiny_server.url + u, content=b'{"model": "x", "prompt": "y"}')   # no content type
    assert r.status_code == 415 and "error" in r.json()
    # still serving
    assert post(tiny_server, u, {"model": TINY_LLAMA, "prompt": [5], "max_tokens": 2}).status_code == 200
