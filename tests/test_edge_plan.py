"""The edge's pure-Python half on CPython: chunk selection, request planning, split choice,
the async decode loop.  No browser."""
from __future__ import annotations

import asyncio

import pytest

from pyapp.edge import split as sp
from pyapp.edge import stream
from pyapp.decode import generate_async
from pyapp.decode import generate


def _chunk(cid, layer, tensors, file="model.safetensors"):
    # tensors: [(name, offset, length)]
    ranges = stream_coalesce([(o, n) for _, o, n in tensors])
    return {"id": cid, "layer": layer, "file": file, "ranges": ranges,
            "bytes": sum(r[1] for r in ranges), "sha256": "",
            "tensors": [{"name": n, "offset": o, "length": ln, "dtype": "f32", "shape": [ln // 4]}
                        for n, o, ln in tensors]}


def stream_coalesce(spans):
    out = []
    for off, length in sorted(spans):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][0] + out[-1][1], off + length) - out[-1][0]
        else:
            out.append([off, length])
    return out


def tied_manifest(n=4, layer_bytes=1000, embed_bytes=8000):
    chunks = [_chunk("embed", None, [("embed_tokens.weight", 100, embed_bytes)])]
    off = 100 + embed_bytes
    for i in range(n):
        chunks.append(_chunk(f"layer.{i}", i, [(f"layers.{i}.a", off, layer_bytes // 2),
                                              (f"layers.{i}.b", off + layer_bytes // 2, layer_bytes // 2)]))
        off += layer_bytes
    chunks.append(_chunk("head", None, [("embed_tokens.weight", 100, embed_bytes), ("norm.weight", off, 40)]))
    return {"n_layers": n, "architecture": "llama", "chunks": chunks,
            "files": {"model.safetensors": {"url": "/m/abc/model.safetensors"}}}


def test_tied_embedding_streams_once():
    m = tied_manifest()
    needed = ["embed_tokens.weight"] + [f"layers.{i}.{x}" for i in range(4) for x in "ab"] + ["norm.weight"]
    chunks, owner = stream.select_chunks(m, needed=needed)
    ids = [c["id"] for c in chunks]
    assert ids == ["layer.0", "layer.1", "layer.2", "layer.3", "head"]
    assert owner["embed_tokens.weight"] == "head"
    assert all(owner[f"layers.{i}.a"] == f"layer.{i}" for i in range(4))


def test_exact_layers_only():
    m = tied_manifest()
    needed = [f"layers.{i}.{x}" for i in (2, 3) for x in "ab"] + ["embed_tokens.weight", "norm.weight"]
    chunks, _ = stream.select_chunks(m, needed=needed)
    assert [c["id"] for c in chunks] == ["layer.2", "layer.3", "head"]
    with pytest.raises(KeyError):
        stream.select_chunks(m, needed=["nope"])


def test_plan_requests_coalesces_small_gaps():
    reqs = stream.plan_requests([[0, 100], [110, 50], [1_000_000, 10]], gap=64)
    assert len(reqs) == 2
    assert reqs[0][:2] == [0, 160]
    assert reqs[0][2] == [[0, 100, 0], [110, 50, 100]]
    assert reqs[1] == [1_000_000, 10, [[1_000_000, 10, 150]]]


def test_ranges_of_one_shared_file_go_around_the_http_cache():
    """The server's layout (every chunk a range of one weights file) reads that file in several
    requests: it is shared, its ranges fetched with 'no-store'; so is a big chunk's pieces in one
    file. A static site's layout (a file per chunk, a file per piece of a big chunk) shares none:
    a repeat visit keeps the browser's cache. One chunk of one piece is one request."""
    from pyapp.edge import offline
    m = dict(tied_manifest(), name="t")
    assert stream.shared_files(m["chunks"]) == {"model.safetensors"}
    assert stream.shared_files(m["chunks"][:1]) == set()
    big = dict(m["chunks"][1], pieces=[[0, 500, "a" * 64], [500, 500, "b" * 64]])      # layer.0
    assert stream.shared_files([big]) == {"model.safetensors"}
    static = offline.chunked_manifest(dict(m, chunks=[m["chunks"][0], big] + m["chunks"][2:]))
    assert sum(c["file"] is None for c in static["chunks"]) == 1        # layer.0: a file a piece
    assert stream.shared_files(static["chunks"]) == set()


def test_tensor_slices_inside_chunk_buffer():
    c = _chunk("x", 0, [("a", 100, 8), ("b", 108, 4), ("c", 500, 12)])
    assert stream.tensor_slices(c) == [("a", 0, 8), ("b", 8, 4), ("c", 12, 12)]


def test_split_choice_fallback_adapter_gets_high_split():
    m = tied_manifest(n=30)
    ad = sp.AdapterInfo(True, vendor="google", architecture="swiftshader", max_storage_binding=1 << 30)
    c = sp.choose_split(m, ad, gflops=0.5)
    assert c.split == 30 and "fallback" in c.reason


def test_split_choice_no_webgpu_is_server_only():
    c = sp.choose_split(tied_manifest(n=30), sp.AdapterInfo(False, "no navigator.gpu"))
    assert c.split == 30 and "no WebGPU" in c.reason


def test_split_choice_fast_gpu_takes_all_layers_and_slow_gpu_fewer():
    m = tied_manifest(n=30, layer_bytes=14_000_000, embed_bytes=113_000_000)
    fast = sp.choose_split(m, sp.AdapterInfo(True, architecture="ampere"), gflops=500.0)
    assert fast.split == 0
    slow = sp.choose_split(m, sp.AdapterInfo(True, architecture="gen-9"), gflops=2.0, budget_ms=60)
    assert 0 < slow.split < 30
    assert slow.edge_ms_per_token <= 60
    tight = sp.choose_split(m, sp.AdapterInfo(True, architecture="x"), gflops=500.0,
                            memory_budget=200_000_000)
    assert tight.split > 0 and tight.min_split == tight.split


def test_split_choice_binding_limit():
    m = tied_manifest(n=4, embed_bytes=8000)
    c = sp.choose_split(m, sp.AdapterInfo(True, architecture="x", max_storage_binding=4000), gflops=10)
    assert c.split == 4


def test_generate_async_matches_generate():
    seq = [5, 7, 9, 2, 11]

    def step(ids, n):
        return seq[n]

    async def astep(ids, n):
        return seq[n]

    for max_new, eos in ((3, ()), (10, (2,)), (0, ())):
        a = generate(step, [1, 2, 3], max_new, eos)
        b = asyncio.run(generate_async(astep, [1, 2, 3], max_new, eos))
        assert (a.ids, a.finish_reason) == (b.ids, b.finish_reason)
    stops = iter([False, True])
    r = asyncio.run(generate_async(astep, [1], 10, (), should_stop=lambda: next(stops)))
    assert r.ids == [5, 7] and r.finish_reason == "cancelled"


def test_edge_modules_are_stdlib_only():
    import ast
    import pathlib
    import sys
    root = pathlib.Path(stream.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"pyapp", "js", "pyodide", "pyodide_js", "__main__"}
    for f in root.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for n in names:
                assert n.split(".")[0] in allowed, f"{f.name} imports {n}"


def test_no_weight_bytes_become_python_objects():
    """The streaming code never converts JS data into Python objects (to_py, bytes, memoryview)."""
    import ast
    import pathlib
    tree = ast.parse(pathlib.Path(stream.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            assert name not in ("to_py", "to_bytes", "to_memoryview", "to_file", "bytes", "bytearray",
                                "memoryview"), f"stream.py calls {name}() (line {node.lineno})"


# ------------------------------------------------------------------ the progressive 'auto' policy
# SmolLM2-135M q4_1 sizes: 30 layers of ~2.2 MB, a tied head of ~17.7 MB (8 layers' worth)
LAYERS, HEAD = [2_200_000] * 30, 17_700_000


def test_policy_moves_down_when_the_server_is_the_slower():
    # split 30 (only the head here): a 250 ms head step prices a layer at 250 * 2.2 / 17.7 = 31 ms;
    # a loaded server at 90 ms per layer (2.7 s a step) is over 1.5x that: half its layers come down
    steps = [(250.0, 2700.0), (240.0, 2750.0), (700.0, 2690.0), (260.0, 2710.0)]
    new, why = sp.rebalance(30, 30, steps, LAYERS, HEAD)
    assert new == 15 and "server" in why
    e, s = sp.per_layer_ms(30, 30, steps, LAYERS, HEAD)
    assert abs(e - 255 * 2.2 / 17.7) < 0.1 and abs(s - 2705 / 30) < 0.1   # medians: the 700 ms spike is out
    # and on down: 15 -> 7 -> 3 -> 1 -> 0, never below `lowest` (the memory budget)
    assert [sp.rebalance(k, 30, steps, LAYERS, HEAD)[0] for k in (15, 7, 3, 1)] == [7, 3, 1, 0]
    assert sp.rebalance(15, 30, steps, LAYERS, HEAD, lowest=12)[0] == 12
    assert sp.rebalance(12, 30, steps, LAYERS, HEAD, lowest=12)[0] == 12
    # not while the last lowering is still streaming, nor with fewer than EVAL_EVERY steps
    assert sp.rebalance(30, 30, steps, LAYERS, HEAD, can_grow=False)[0] == 30
    assert sp.rebalance(30, 30, steps[:3], LAYERS, HEAD)[0] == 30


def test_policy_dead_band_and_move_back():
    # this machine unloaded: SwiftShader's head 250 ms (31 ms a layer), numpy 3 ms a layer:
    # at 30 nothing moves (the edge holds no layer to give back, the server is the faster)
    fast_server = [(250.0, 90.0)] * 4
    assert sp.rebalance(30, 30, fast_server, LAYERS, HEAD) == (30, "")
    # at 15 the edge (15 layers + head = 50.7 MB in 470 ms: 20 ms a layer) is over 1.5x the
    # server's 6 ms: half the edge's layers go back
    assert sp.rebalance(15, 30, [(470.0, 90.0)] * 4, LAYERS, HEAD)[0] == 22
    # the dead band: server/edge between 1/1.5 and 1.5 moves nothing either way
    edge = 470.0 * 2.2 / 50.7                      # ms per layer at 15
    for ratio in (0.7, 1.0, 1.4):
        assert sp.rebalance(15, 30, [(470.0, ratio * edge * 15)] * 4, LAYERS, HEAD)[0] == 15, ratio
    assert sp.rebalance(15, 30, [(470.0, 1.6 * edge * 15)] * 4, LAYERS, HEAD)[0] == 7
    assert sp.rebalance(15, 30, [(470.0, edge * 15 / 1.6)] * 4, LAYERS, HEAD)[0] == 22
    # a server that reports itself loaded (its recent ms per layer, all sessions) counts even
    # when this session's round trips were quick
    assert sp.rebalance(30, 30, fast_server, LAYERS, HEAD, reported=60.0)[0] == 15
    assert sp.rebalance(30, 30, fast_server, LAYERS, HEAD, reported=40.0)[0] == 30
