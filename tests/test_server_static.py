"""Model files and the site over a real uvicorn: Range, 416, ETag/304, If-Range, traversal, manifest."""
from __future__ import annotations

import hashlib
import http.client
import os

import httpx
import pytest

from test_server_util import (TINY_BERT, TINY_LLAMA, start_server, tiny_server, tiny_store)  # noqa: F401


@pytest.fixture(scope="module")
def manifest(tiny_server):
    r = httpx.get(f"{tiny_server.url}/models/{TINY_LLAMA}/manifest.json")
    assert r.status_code == 200
    return r.json()


def weights(tiny_store):
    return (tiny_store / TINY_LLAMA / "model.safetensors").read_bytes()


def test_manifest_schema(manifest, tiny_store):
    m = manifest
    for k in ("name", "architecture", "config", "n_layers", "dtype", "hidden", "vocab", "files",
              "tokenizer", "chunks"):
        assert k in m, k
    assert m["name"] == TINY_LLAMA and m["architecture"] == "llama" and m["dtype"] == "f32"
    assert m["n_layers"] == 3 and m["hidden"] == 72 and m["vocab"] == 101
    assert set(m["tokenizer"]) == {"tokenizer.json", "tokenizer_config.json"}
    ids = [c["id"] for c in m["chunks"]]
    assert ids == ["embed", "layer.0", "layer.1", "layer.2", "head"]
    f = m["files"]["model.safetensors"]
    data = weights(tiny_store)
    assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert f["url"] == f"/models/{TINY_LLAMA}/{f['sha256'][:16]}/model.safetensors"
    from safetensors.numpy import load_file

    ref = load_file(str(tiny_store / TINY_LLAMA / "model.safetensors"))
    for c in m["chunks"]:
        assert c["layer"] == (int(c["id"].split(".")[1]) if c["id"].startswith("layer.") else None)
        blob = b"".join(data[o:o + n] for o, n in c["ranges"])
        assert hashlib.sha256(blob).hexdigest() == c["sha256"] and len(blob) == c["bytes"]
        # ranges are sorted, disjoint and not adjacent (coalesced)
        for (o1, n1), (o2, _) in zip(c["ranges"], c["ranges"][1:]):
            assert o1 + n1 < o2
        for t in c["tensors"]:
            arr = ref[t["name"]]
            assert t["dtype"] == "f32" and t["shape"] == list(arr.shape)
            assert data[t["offset"]:t["offset"] + t["length"]] == arr.tobytes()
            assert any(o <= t["offset"] and t["offset"] + t["length"] <= o + n for o, n in c["ranges"])
    from pyapp.weightfile import load_model_dir

    model = load_model_dir(tiny_store / TINY_LLAMA)
    assert [t["name"] for t in m["chunks"][1]["tensors"]] == sorted(
        model.layer_tensors(0), key=lambda n: next(t["offset"] for t in m["chunks"][1]["tensors"] if t["name"] == n))
    assert {t["name"] for t in m["chunks"][2]["tensors"]} == set(model.layer_tensors(1))


def test_manifest_cached_on_disk(manifest, tiny_store):
    p = tiny_store / TINY_LLAMA / ".pyapp-manifest-f32.json"
    assert p.is_file()


def test_manifest_errors(tiny_server):
    r = httpx.get(f"{tiny_server.url}/models/nope/manifest.json")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{tiny_server.url}/models/{TINY_LLAMA}/manifest.json?dtype=q9")
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(f"{tiny_server.url}/models/{TINY_LLAMA}/manifest.json?dtype=f16")
    assert r.status_code == 404 and "error" in r.json()


def _get(srv, path, headers=None):
    return httpx.get(srv.url + path, headers=headers or {})


@pytest.mark.parametrize("rng,sl", [
    ("bytes=0-99", slice(0, 100)),            # first
    ("bytes=1000-4999", slice(1000, 5000)),   # middle
    ("bytes=-100", slice(-100, None)),        # suffix
    ("bytes=LAST-", None),                    # last byte, open-ended
    ("bytes=5-", slice(5, None)),             # open-ended
    ("bytes=0-999999999", slice(0, None)),    # end clamped to the size
])
def test_range_byte_exact(tiny_server, manifest, tiny_store, rng, sl):
    data = weights(tiny_store)
    url = manifest["files"]["model.safetensors"]["url"]
    if "LAST" in rng:
        rng, sl = f"bytes={len(data) - 1}-", slice(len(data) - 1, None)
    r = _get(tiny_server, url, {"Range": rng})
    assert r.status_code == 206
    want = data[sl]
    assert r.content == want
    start = sl.indices(len(data))[0]
    assert r.headers["content-range"] == f"bytes {start}-{start + len(want) - 1}/{len(data)}"
    assert r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(want)


def test_full_get_and_headers(tiny_server, manifest, tiny_store):
    f = manifest["files"]["model.safetensors"]
    r = _get(tiny_server, f["url"])
    assert r.status_code == 200 and r.content == weights(tiny_store)
    assert r.headers["accept-ranges"] == "bytes"
    assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
    assert r.headers["etag"] == f'"{f["sha256"]}"'
    h = httpx.head(tiny_server.url + f["url"])
    assert h.status_code == 200 and h.content == b"" and int(h.headers["content-length"]) == f["size"]
    # the plain (not content-addressed) URL revalidates instead
    r = _get(tiny_server, f"/models/{TINY_LLAMA}/files/config.json")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    assert r.content == (tiny_store / TINY_LLAMA / "config.json").read_bytes()
    # tokenizer files are served too
    r = _get(tiny_server, manifest["tokenizer"]["tokenizer.json"])
    assert r.status_code == 200 and r.content == (tiny_store / TINY_LLAMA / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("rng", ["bytes=999999999-", "bytes=10-5", "bytes=-0", "bytes=abc-def", "bytes=,"])
def test_range_unsatisfiable(tiny_server, manifest, tiny_store, rng):
    size = len(weights(tiny_store))
    r = _get(tiny_server, manifest["files"]["model.safetensors"]["url"], {"Range": rng})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"


def test_multi_range_and_unknown_unit_send_whole(tiny_server, manifest, tiny_store):
    url = manifest["files"]["model.safetensors"]["url"]
    for rng in ("bytes=0-1,5-6", "items=0-3"):
        r = _get(tiny_server, url, {"Range": rng})
        assert r.status_code == 200 and r.content == weights(tiny_store)


def test_etag_304_and_if_range(tiny_server, manifest):
    url = manifest["files"]["model.safetensors"]["url"]
    r = _get(tiny_server, url)
    etag = r.headers["etag"]
    r = _get(tiny_server, url, {"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    r = _get(tiny_server, url, {"If-None-Match": '"other", ' + etag})
    assert r.status_code == 304
    r = _get(tiny_server, url, {"If-None-Match": '"other"'})
    assert r.status_code == 200
    r = _get(tiny_server, url, {"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206 and len(r.content) == 10
    r = _get(tiny_server, url, {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200
    # plain URLs have an ETag too
    p = f"/models/{TINY_LLAMA}/files/config.json"
    e2 = _get(tiny_server, p).headers["etag"]
    assert _get(tiny_server, p, {"If-None-Match": e2}).status_code == 304


def test_wrong_digest_or_unlisted_file_404(tiny_server, manifest, tiny_store):
    r = _get(tiny_server, f"/models/{TINY_LLAMA}/0000000000000000/model.safetensors")
    assert r.status_code == 404 and "error" in r.json()
    # a file in the model folder that no manifest names is never served
    (tiny_store / TINY_LLAMA / "notes.txt").write_text("private")
    for p in (f"/models/{TINY_LLAMA}/files/notes.txt", f"/models/{TINY_LLAMA}/files/.pyapp-manifest-f32.json",
              f"/models/{TINY_LLAMA}/files/pyapp.json"):
        assert _get(tiny_server, p).status_code == 404


def _raw(srv, path):
    """GET without any client-side normalisation of the path."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


TRAVERSALS = [
    "/models/{m}/files/../../secret.txt",
    "/models/{m}/files/..%2F..%2F..%2Fsecret.txt",
    "/models/{m}/files/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/models/{m}/files/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/models/{m}/files/..%5c..%5csecret.txt",
    "/models/{m}/files/%2Fetc%2Fpasswd",
    "/models/{m}/files//etc/passwd",
    "/models/..%2F..%2F/files/secret.txt",
    "/models/%2e%2e/files/secret.txt",
    "/models/{m}/files/link.txt",
    "/models/{m}/files/%00config.json",
    "/../../secret.txt",
    "/..%2F..%2Fsecret.txt",
    "/%2e%2e/%2e%2e/secret.txt",
    "//etc/passwd",
    "/%2Fetc%2Fpasswd",
    "/etc/passwd",
    "/vendor/../../secret.txt",
    "/link.txt",
    "/web-link/secret.txt",
]


def test_traversal_never_escapes(tiny_store, tmp_path):
    secret = tiny_store.parent / "secret.txt"
    assert secret.read_text() == "TOP SECRET"
    web = tmp_path / "web"
    (web / "vendor").mkdir(parents=True)
    (web / "vendor" / "ok.js").write_text("export const ok = 1;")
    (web / "index.html").write_text("<html>site</html>")
    os.symlink(secret, web / "link.txt")
    os.symlink(tiny_store.parent, web / "web-link")
    link = tiny_store / TINY_BERT / "link.txt"
    if not link.exists():
        os.symlink(secret, link)
    passwd = open("/etc/passwd", "rb").read()
    with start_server([TINY_LLAMA, TINY_BERT], tiny_store, web_dir=web) as srv:
        assert _raw(srv, "/vendor/ok.js") == (200, b"export const ok = 1;")
        assert _raw(srv, "/") == (200, b"<html>site</html>")
        for t in TRAVERSALS:
            for m in (TINY_LLAMA, TINY_BERT):
                status, body = _raw(srv, t.format(m=m))
                assert status in (400, 404), (t, status)
                assert b"TOP SECRET" not in body and passwd not in body, t
    # a model file that is a symlink out of the store is refused even though a manifest names it
    import shutil

    store2 = tmp_path / "store2"
    (store2 / TINY_LLAMA).mkdir(parents=True)
    for f in (tiny_store / TINY_LLAMA).iterdir():
        if f.is_file() and not f.name.startswith(".") and f.name != "tokenizer_config.json":
            shutil.copy(f, store2 / TINY_LLAMA / f.name)
    outside = tmp_path / "tokenizer_config.json"
    outside.write_text('{"secret": "TOP SECRET"}')
    os.symlink(outside, store2 / TINY_LLAMA / "tokenizer_config.json")
    with start_server([TINY_LLAMA], store2, web_dir=None) as srv:
        man = httpx.get(f"{srv.url}/models/{TINY_LLAMA}/manifest.json").json()
        for path in (man["files"]["tokenizer_config.json"]["url"],
                     f"/models/{TINY_LLAMA}/files/tokenizer_config.json"):
            status, body = _raw(srv, path)
            assert status == 404 and b"TOP SECRET" not in body
        status, body = _raw(srv, man["files"]["config.json"]["url"])
        assert status == 200


def test_safe_join_unit(tmp_path):
    from server.static import safe_join

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    assert safe_join(tmp_path, "a/f.txt") == (tmp_path / "a" / "f.txt").resolve()
    for bad in ("", "/a/f.txt", "../a/f.txt", "a/../a/f.txt", "a/./f.txt", "a\\f.txt", "a/f.txt\x00",
                "a", "a/", "a//f.txt", ".hidden", "C:/x"):
        assert safe_join(tmp_path, bad) is None, bad


def test_placeholder_index_lists_models(tiny_server):
    r = httpx.get(tiny_server.url + "/")
    assert r.status_code == 200 and TINY_LLAMA in r.text and TINY_BERT in r.text
    r = httpx.get(tiny_server.url + "/nothing-here.js")
    assert r.status_code == 404 and "error" in r.json()


def test_f16_manifest_and_session(tiny_store, tmp_path):
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    store = tmp_path / "store16"
    shutil.copytree(tiny_store / TINY_LLAMA, store / TINY_LLAMA,
                    ignore=shutil.ignore_patterns(".*", "notes.txt", "link.txt"))
    t = load_file(str(store / TINY_LLAMA / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in t.items()}, str(store / TINY_LLAMA / "model.f16.safetensors"))
    data = (store / TINY_LLAMA / "model.f16.safetensors").read_bytes()
    with start_server([TINY_LLAMA], store, web_dir=None) as srv:
        m = httpx.get(f"{srv.url}/models/{TINY_LLAMA}/manifest.json?dtype=f16").json()
        assert m["dtype"] == "f16" and "model.f16.safetensors" in m["files"]
        assert "model.safetensors" not in m["files"]
        for c in m["chunks"]:
            assert c["file"] == "model.f16.safetensors"
            assert all(x["dtype"] == "f16" for x in c["tensors"])
            assert hashlib.sha256(b"".join(data[o:o + n] for o, n in c["ranges"])).hexdigest() == c["sha256"]
        r = httpx.get(srv.url + m["files"]["model.f16.safetensors"]["url"], headers={"Range": "bytes=8-15"})
        assert r.status_code == 206 and r.content == data[8:16]
        r = httpx.post(f"{srv.url}/v1/sessions", json={"model": TINY_LLAMA, "split": 2, "weights": "f16",
                                                        "dtype": "f16"})
        assert r.status_code == 201
        sid, key = r.json()["id"], r.json()["key"]
        r = httpx.post(f"{srv.url}/v1/sessions/{sid}/forward", content=np.asarray([5, 6], "<i4").tobytes(),
                       headers={"content-type": "application/octet-stream", "x-session-key": key})
        assert r.status_code == 200 and r.headers["x-dtype"] == "f16" and len(r.content) == 2 * 72 * 2
        from pyapp.numpy_backend import NumpyBackend

        be = NumpyBackend.load(store / TINY_LLAMA, "f16")
        want = be.forward(ids=[5, 6], cache=be.new_cache(128, 0, 2), stop=2, head=False).astype(np.float16)
        assert np.array_equal(np.frombuffer(r.content, "<f2").reshape(2, 72), want)
