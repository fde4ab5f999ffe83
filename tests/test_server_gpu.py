"""`--backend wgpu`: the same routes on pyapp.gpu.GpuBackend (wgpu-py; lavapipe on CI)."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from test_server_util import TINY_LLAMA, ids_bytes, start_server, tiny_store  # noqa: F401

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")


@pytest.fixture(scope="module")
def gpu_server(tiny_store):
    try:
        from pyapp.gpu.native import NativeDevice

        NativeDevice.create()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no WebGPU adapter: {e}")
    with start_server([TINY_LLAMA], tiny_store, web_dir=None, backend="wgpu", preload=True) as srv:
        yield srv


def test_gpu_session_forward_close_to_numpy(gpu_server, tiny_store):
    from pyapp.numpy_backend import NumpyBackend

    ref = NumpyBackend.load(tiny_store / TINY_LLAMA)
    r = httpx.post(f"{gpu_server.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 2})
    assert r.status_code == 201, r.text
    s = r.json()
    cache = ref.new_cache(128, 0, 2)
    for step in ([5, 17, 33], [8], [90]):
        r = httpx.post(f"{gpu_server.url}/v1/sessions/{s['id']}/forward", content=ids_bytes(step),
                       headers={"content-type": "application/octet-stream", "x-session-key": s["key"]},
                       timeout=60)
        assert r.status_code == 200, r.text
        got = np.frombuffer(r.content, "<f4").reshape(len(step), 72)
        want = ref.forward(ids=step, cache=cache, stop=2, head=False)
        assert np.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_gpu_greedy_completion_equals_numpy(gpu_server, tiny_store):
    from pyapp.decode import generate
    from pyapp.numpy_backend import NumpyBackend

    ref = NumpyBackend.load(tiny_store / TINY_LLAMA)
    cache = ref.new_cache(20)
    want = generate(lambda ids, i: int(np.argmax(ref.forward(ids=ids, cache=cache)[-1])), [5, 17, 33], 8,
                    (2,)).ids
    d = httpx.post(f"{gpu_server.url}/v1/completions", timeout=120, json={
        "model": TINY_LLAMA, "prompt": [5, 17, 33], "max_tokens": 8, "temperature": 0}).json()
    assert d["pyapp"]["ids"] == want
