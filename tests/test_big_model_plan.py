"""Bounded streaming and the fit check, planned on CPython (no browser): the manifest's pieces
against the bytes of the file (hashlib), the edge's piece plan against the safetensors header,
and the refusal of a split that cannot fit."""
from __future__ import annotations

import hashlib
import json

import pytest

from pyapp.edge import split as sp
from pyapp.edge import stream
from pyapp.edge.errors import EdgeError
from pyapp.synth import synth
from pyapp.weightfile import read_safetensors_header
from server.manifest import PIECE_BYTES, build_manifest

CFG = dict(model_type="llama", vocab_size=4099, hidden_size=1024, intermediate_size=2816,
           num_hidden_layers=3, num_attention_heads=16, num_key_value_heads=4,
           max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 76 MB synthetic llama whose table, head and MLP weights span several 16 MiB pieces,
    in f32 and in q8_0 (34-byte blocks: tensors start off 4-byte boundaries)."""
    import os
    root = tmp_path_factory.mktemp("plan")
    old = os.environ.get("PYAPP_MODELS_DIR")
    os.environ["PYAPP_MODELS_DIR"] = str(root / "store")
    (root / "c.json").write_text(json.dumps(CFG))
    out = {f: synth(f"p-{f}", root / "c.json", dtype=f) for f in ("f32", "q8_0")}
    yield out
    if old is None:
        os.environ.pop("PYAPP_MODELS_DIR", None)
    else:
        os.environ["PYAPP_MODELS_DIR"] = old


@pytest.mark.parametrize("fmt,piece", [("f32", PIECE_BYTES), ("q8_0", 1 << 20)])
def test_pieces_cover_every_tensor_once_and_verify(model, fmt, piece, monkeypatch):
    import server.manifest
    monkeypatch.setattr(server.manifest, "PIECE_BYTES", piece)
    path = model[fmt]
    m = build_manifest("p", path, fmt)
    fname = path / ("model.safetensors" if fmt == "f32" else f"model.{fmt}.safetensors")
    header, data0 = read_safetensors_header(fname)
    raw = fname.read_bytes()
    written = {n: bytearray(h["data_offsets"][1] - h["data_offsets"][0]) for n, h in header.items()}
    seen = {n: 0 for n in header}
    multi = 0
    for c in m["chunks"]:
        pieces = stream.chunk_pieces(c)
        multi += len(pieces) > 1
        assert sum(p["bytes"] for p in pieces) == c["bytes"]
        for p in pieces:
            assert p["bytes"] <= piece
            data = b"".join(raw[o:o + n] for o, n in p["ranges"])
            assert len(data) == p["bytes"] and hashlib.sha256(data).hexdigest() == p["sha256"]
            for name, at, n, t_off in p["slices"]:
                assert t_off % 4 == 0 and (n % 4 == 0 or t_off + n == len(written[name]))
                written[name][t_off:t_off + n] = data[at:at + n]
                seen[name] += n
    assert multi >= 3                    # the table, the head and the MLP chunks are split
    for n, h in header.items():
        a, b = h["data_offsets"]
        assert seen[n] == b - a and bytes(written[n]) == raw[data0 + a:data0 + b], n


def manifest_with_shapes(n=4, rows=100, cols=20, layer_bytes=1000):
    chunks = [{"id": "embed", "layer": None, "bytes": rows * cols * 4,
               "tensors": [{"name": "tok", "length": rows * cols * 4, "shape": [rows, cols]}]}]
    for i in range(n):
        chunks.append({"id": f"layer.{i}", "layer": i, "bytes": layer_bytes,
                       "tensors": [{"name": f"l{i}", "length": layer_bytes, "shape": [10, layer_bytes // 40]}]})
    chunks.append({"id": "head", "layer": None, "bytes": rows * cols * 4 + 200,
                   "tensors": [{"name": "tok", "length": rows * cols * 4, "shape": [rows, cols]},
                               {"name": "norm", "length": 200, "shape": [50]}]})
    return {"name": "m", "n_layers": n, "tied_embeddings": True, "chunks": chunks}


def test_refused_before_fetch_naming_the_split_that_fits():
    m = manifest_with_shapes()          # 8,200 B head + 1,000 B a layer
    sp.check_fit(m, 0, 1 << 20, budget=20_000)
    with pytest.raises(EdgeError) as e:
        sp.check_fit(m, 0, 1 << 20, budget=10_000, per_layer_extra=100, budget_source="a test")
    assert e.value.code == "too_big"
    assert str(e.value) == ("m at split 0 needs 12600 bytes of GPU memory, more than this device's "
                            "budget of 10000 bytes (a test); split 3 or higher fits (layers 3..3 and "
                            "the head: 9300 bytes)")
    with pytest.raises(EdgeError, match="even the head alone does not"):
        sp.check_fit(m, 0, 1 << 20, budget=5_000)


def test_sharded_tables_fit_a_small_binding_rows_do_not():
    m = manifest_with_shapes()          # an 8,000 B table of 80-byte rows
    sp.check_fit(m, 0, 4000)            # sharded over two bindings
    assert sp.choose_split(m, sp.AdapterInfo(True, architecture="x", max_storage_binding=4000),
                           gflops=1e6).split == 0
    with pytest.raises(EdgeError, match="norm needs 200 bytes in one GPU binding, over this device's limit of 100"):
        sp.check_fit(m, 0, 100)         # 80-byte rows fit; the 200-byte norm vector cannot be split
