"""The OpenAI surface issue 17 completes: logprobs / top_logprobs and embeddings `dimensions`
checked against PyTorch (transformers' tiny models), the fields the schema requires, and
abandoned requests that stop computing; RSS after 64 SmolLM2 sessions end."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from test_server_util import (ROOT, TINY_BERT, TINY_LLAMA, real_store_has, start_server,  # noqa: F401
                              tiny_server, tiny_store)

SMOL = "smollm2-135m"


def post(srv, path, body):
    return httpx.post(srv.url + path, json=body, timeout=60)


def torch_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()


def test_logprobs_match_torch(tiny_server, tiny_dir):
    _, model = tiny_dir("llama")
    prompt = [5, 17, 33, 8]
    d = post(tiny_server, "/v1/completions", {"model": TINY_LLAMA, "prompt": prompt, "max_tokens": 5,
                                              "temperature": 0, "logprobs": 3}).json()
    got_ids = d["pyapp"]["ids"]
    lp = d["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(got_ids) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    ctx = list(prompt)
    for i, tid in enumerate(got_ids):
        want = torch_logprobs(model, ctx)
        assert abs(lp["token_logprobs"][i] - want[tid]) < 1e-4      # f32 executor vs f64 torch
        top3 = np.argsort(-want)[:3]
        assert sorted(lp["top_logprobs"][i].values(), reverse=True) == pytest.approx(
            [want[j] for j in top3], abs=1e-4)
        ctx.append(tid)
    # chat: logprobs true + top_logprobs, OpenAI's content-list shape
    d = post(tiny_server, "/v1/chat/completions", {
        "model": TINY_LLAMA, "messages": [{"role": "user", "content": "w5 w9"}], "max_tokens": 3,
        "temperature": 0, "logprobs": True, "top_logprobs": 2}).json()
    ch = d["choices"][0]
    assert ch["message"]["refusal"] is None and ch["logprobs"]["refusal"] is None
    items = ch["logprobs"]["content"]
    assert len(items) == len(d["pyapp"]["ids"])
    for it in items:
        assert set(it) == {"token", "logprob", "bytes", "top_logprobs"} and len(it["top_logprobs"]) == 2
        assert it["logprob"] <= 0 and it["top_logprobs"][0]["logprob"] >= it["top_logprobs"][1]["logprob"]
        assert it["logprob"] == pytest.approx(it["top_logprobs"][0]["logprob"])   # greedy = top 1


def test_embedding_dimensions_match_torch(tiny_server, tiny_dir):
    import torch

    _, model = tiny_dir("bert")
    ids = [1, 5, 6, 7, 2]
    with torch.no_grad():
        h = model(torch.tensor([ids])).last_hidden_state[0].double().mean(0).numpy()
    for dims in (8, 33, 72):
        d = post(tiny_server, "/v1/embeddings", {"model": TINY_BERT, "input": [ids], "dimensions": dims}).json()
        v = np.asarray(d["data"][0]["embedding"])
        want = h[:dims] / np.linalg.norm(h[:dims])
        assert v.shape == (dims,) and np.max(np.abs(v - want)) < 1e-4
    r = post(tiny_server, "/v1/embeddings", {"model": TINY_BERT, "input": "w5", "dimensions": 73})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_required_response_fields(tiny_server):
    """The fields the official OpenAI schema marks required, on every response object."""
    c = post(tiny_server, "/v1/completions", {"model": TINY_LLAMA, "prompt": "w5", "max_tokens": 2}).json()
    assert {"id", "object", "created", "model", "choices"} <= set(c)
    assert {"index", "text", "logprobs", "finish_reason"} <= set(c["choices"][0])
    assert {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(c["usage"])
    ch = post(tiny_server, "/v1/chat/completions", {"model": TINY_LLAMA, "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "w5"}]}).json()
    assert {"id", "object", "created", "model", "choices"} <= set(ch)
    assert {"index", "message", "logprobs", "finish_reason"} <= set(ch["choices"][0])
    assert {"role", "content", "refusal"} <= set(ch["choices"][0]["message"])
    e = post(tiny_server, "/v1/embeddings", {"model": TINY_BERT, "input": "w5"}).json()
    assert {"object", "data", "model", "usage"} <= set(e) and {"prompt_tokens", "total_tokens"} <= set(e["usage"])
    m = httpx.get(tiny_server.url + "/v1/models").json()["data"][0]
    assert {"id", "object", "created", "owned_by"} <= set(m)


@pytest.mark.real_model
@pytest.mark.skipif(not real_store_has(SMOL), reason="SmolLM2 not in the store")
def test_abandoned_completion_stops_within_a_second():
    """One compute thread: an abandoned 300-token completion must free it for a 1-token probe."""
    with start_server([SMOL], web_dir=None, preload=True, limits={"threads": 1}) as srv:
        body = {"model": SMOL, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0}

        def abandon():
            try:
                httpx.post(srv.url + "/v1/completions", json=body, timeout=0.8)
            except httpx.TimeoutException:
                pass   # the client gives up and closes its connection

        for stream in (False, True):
            t = threading.Thread(target=abandon if not stream else lambda: _abandon_stream(srv, body))
            t.start()
            t.join()
            t0 = time.perf_counter()
            r = httpx.post(srv.url + "/v1/completions", timeout=60,
                           json={"model": SMOL, "prompt": "Hi", "max_tokens": 1, "temperature": 0})
            waited = time.perf_counter() - t0
            assert r.status_code == 200 and waited < 1.5, (stream, waited)


def _abandon_stream(srv, body):
    with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.real_model
@pytest.mark.skipif(not real_store_has(SMOL), reason="SmolLM2 not in the store")
def test_64_idle_sessions_give_their_memory_back(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "pyapp", "serve", "--no-setup", "--model", SMOL,
                          "--port", str(port), "--max-sessions-per-client", "64", "--web-dir", str(tmp_path)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    octet = {"content-type": "application/octet-stream"}
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None and time.time() - t0 < 120
            time.sleep(0.3)

        def session_with_tokens():
            info = httpx.post(url + "/v1/sessions", json={"model": SMOL, "split": 15}).json()
            k = {"x-session-key": info["key"]}
            r = httpx.post(f"{url}/v1/sessions/{info['id']}/forward", headers={**octet, **k}, timeout=60,
                           content=np.arange(100, 104, dtype="<i4").tobytes())
            assert r.status_code == 200
            return info["id"], k

        sid, k = session_with_tokens()           # warm up the executor's buffers
        httpx.delete(f"{url}/v1/sessions/{sid}", headers=k)
        time.sleep(0.5)
        before = _rss_mb(p.pid)
        held = [session_with_tokens() for _ in range(64)]
        during = _rss_mb(p.pid)
        accounted = httpx.get(url + "/healthz").json()["bytes"]
        for sid, k in held:
            assert httpx.delete(f"{url}/v1/sessions/{sid}", headers=k).status_code == 200
        time.sleep(0.5)
        after = _rss_mb(p.pid)
        print(f"RSS before {before:.0f} MB, 64 sessions {during:.0f} MB "
              f"(accounted {accounted / 2**20:.0f} MB), after {after:.0f} MB")
        assert accounted == 64 * 47_185_920
        assert during - before < 0.1 * accounted / 2**20     # committed as positions fill
        assert abs(after - before) <= 0.1 * before            # and given back
    finally:
        p.terminate()
        p.wait(10)
