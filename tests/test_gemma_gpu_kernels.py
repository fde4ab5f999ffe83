"""Gemma 3's weight formats and op kinds on the GPU (lavapipe through wgpu-py).

Formats: Q5_0, Q4_K and Q6_K blocks read by every GEMV variant, the fused multi-GEMV and the
embedding gather, against `gguf.quants.dequantize` of the same blocks (independent of pyapp),
in float64.  Blocks: gguf's own `quantize` for Q5_0; for the K-quants (gguf cannot quantize
them) random bytes with finite f16 scales (every bit pattern of the quants is valid), and the
real blocks of Gemma 3 270M's store file at the model's shapes.
Tolerance: max |gpu - ref| / max |ref| <= 1e-5 (f32 accumulation over K <= 2048).

Ops: rms_norm with `offset` (1 + w) and `group` (per-head norms), `scale`, `gelu_tanh_mul`,
sliding-window attention over a ring cache, per-layer RoPE bases, against numpy on the same
inputs (an independent float64 formula for each, not pyapp's numpy executor)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pyapp import formats
from pyapp.models import Model, op

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")
gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402
from test_gpu_formats import VARIANTS, gemv_backend, relerr  # noqa: E402

TOL = 1e-5
KFORMATS = ["q5_0", "q4_k", "q6_k"]
GEMMA = "gemma3-270m"


def random_blocks(fmt: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """uint8 [rows, row_bytes]: gguf's Q5_0 of random floats; for Q4_K / Q6_K random bytes
    whose f16 super-block scales are set to small finite values."""
    rng = np.random.default_rng(seed)
    if fmt == "q5_0":
        x = (rng.standard_normal((rows, cols)) * 0.2 + 0.03).astype(np.float32)
        return quantize(x, gguf.GGMLQuantizationType.Q5_0)
    f = formats.get(fmt)
    raw = rng.integers(0, 256, (rows, cols // f.block, f.block_bytes), dtype=np.uint8)
    scales = (rng.random((rows, cols // f.block, 2)) * 0.02 + 0.001).astype("<f2").view(np.uint8)
    if fmt == "q4_k":
        raw[..., 0:4] = scales.reshape(rows, -1, 4)                 # d, dmin
    else:
        raw[..., 208:210] = scales[..., 0:2]                        # d
    return raw.reshape(rows, -1)


def deq(fmt: str, raw: np.ndarray) -> np.ndarray:
    return dequantize(raw, gguf.GGMLQuantizationType[fmt.upper()]).astype(np.float64)


def run_gemv(device, fmt, raw, variant, T, seed=0, max_binding=None):
    N = raw.shape[0]
    K = formats.get(fmt).value_shape(raw.shape)[1]
    g = gemv_backend(device, [op("linear", "x", "y", {"w": "w", "b": None})], {"w": (N, K)},
                     {"w": fmt}, K, {"linear": variant}, max_binding, {"y": N})
    g.write_weight("w", 0, raw)
    x = np.random.default_rng(seed + 1).standard_normal((T, K)).astype(np.float32)
    g.poison()
    g.forward(x=x, head=False)
    got = g.read_activation("y", T)
    n_chunks = len(g.tensors["w"].chunks)
    g.destroy()
    return relerr(got, x.astype(np.float64) @ deq(fmt, raw).T), n_chunks


def test_numpy_decodes_match_gguf_on_random_blocks():
    """pyapp.formats' decodes (numpy backend) equal gguf's on the blocks these tests feed the GPU."""
    for fmt in KFORMATS:
        raw = random_blocks(fmt, 7, 512, 1)
        assert np.array_equal(formats.get(fmt).decode(raw, (7, 512)), deq(fmt, raw).astype(np.float32))


@pytest.mark.parametrize("fmt", KFORMATS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [1, 5])
def test_gemv_odd_shape(device, fmt, variant, T):
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups")
    K = 96 if fmt == "q5_0" else 768                    # 3 blocks / 3 super-blocks a row
    err, _ = run_gemv(device, fmt, random_blocks(fmt, 135, K, T), variant, T)
    assert err <= TOL, err


@pytest.mark.parametrize("fmt", KFORMATS)
def test_gemv_split_across_bindings(device, fmt):
    """Rows over several buffers whose starts fall on 4-byte boundaries (Q6_K rows of one
    super-block are 210 bytes, Q5_0 rows of 3 blocks 66)."""
    K = 96 if fmt == "q5_0" else 256
    err, n = run_gemv(device, fmt, random_blocks(fmt, 203, K, 4), "row", 2, max_binding=4096)
    assert n > 2 and err <= TOL, (n, err)


@pytest.mark.parametrize("variant", ["row", "wg"])
def test_fused_gemv_mixed_k_formats(device, variant):
    """Q5_0, Q4_K and Q6_K weights over one input in one dispatch (fuse forced on)."""
    N, K = 45, 512
    fm = {"wa": "q5_0", "wb": "q4_k", "wc": "q6_k"}
    raws = {w: random_blocks(f, N, K, i) for i, (w, f) in enumerate(fm.items())}
    layer = [op("linear", "x", y, {"w": w, "b": None}) for w, y in zip(fm, "abc")]
    g = gemv_backend(device, layer, {w: (N, K) for w in fm}, fm, K, {"linear": variant, "fuse": True},
                     widths={"a": N, "b": N, "c": N})
    for w, r in raws.items():
        g.write_weight(w, 0, r)
    _rec, n = g._plan(3, None, 0, 1, False, False, False, False)
    assert n == 1
    x = np.random.default_rng(9).standard_normal((3, K)).astype(np.float32)
    g.poison()
    g.forward(x=x, head=False)
    for (w, f), y in zip(fm.items(), "abc"):
        assert relerr(g.read_activation(y, 3), x @ deq(f, raws[w]).T) <= TOL, f
    g.destroy()


@pytest.mark.parametrize("fmt", KFORMATS)
def test_embedding_gather(device, fmt):
    """Rows straight out of the blocks (a table split across bindings)."""
    from pyapp.gpu import GpuBackend
    V, D = 203, (96 if fmt == "q5_0" else 512)
    raw = random_blocks(fmt, V, D, 11)
    m = Model(arch="test", config={}, hidden=D, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=D, vocab=V,
              max_context=16, causal=False, embed=[op("embed", "ids", "x", {"tokens": "tok"})],
              layers=[[]], head=[])
    g = GpuBackend(device, m, 0, 1, embed=True, head=False, shapes={"tok": (V, D)}, dtypes={"tok": fmt},
                   max_tokens=8, max_positions=16, max_binding=4096)
    g.write_weight("tok", 0, raw)
    assert len(g.tensors["tok"].chunks) > 2
    ids = [0, V - 1, 7, V // 2, 100, 3]
    g.poison()
    got = g.forward(ids=ids, head=False)
    want = deq(fmt, raw)[ids]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()   # a gather: f32-rounding only
    g.destroy()


# ----------------------------------------------------------------------------- real shapes

@pytest.fixture(scope="module")
def gemma_blocks():
    from pyapp import store
    try:
        path = store.model_path(GEMMA) / "model.q4_k_m.safetensors"
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{GEMMA} not stored: {e}")
    from safetensors import safe_open
    f = safe_open(str(path), "numpy")
    return f, f.metadata()


@pytest.mark.real_model
@pytest.mark.parametrize("name,variant", [
    ("model.layers.0.self_attn.q_proj.weight", "row"),     # Q5_0 1024 x 640
    ("model.layers.0.mlp.gate_proj.weight", "wg"),         # Q5_0 2048 x 640
    ("model.layers.0.self_attn.o_proj.weight", "row"),     # Q4_K 640 x 1024
    ("model.layers.0.mlp.down_proj.weight", "row"),        # Q6_K 640 x 2048
    ("model.layers.1.mlp.down_proj.weight", "wg"),         # Q4_K 640 x 2048
    ("model.layers.2.self_attn.v_proj.weight", "row"),     # Q8_0 256 x 640
])
def test_gemv_gemma_real_blocks(device, gemma_blocks, name, variant):
    f, types = gemma_blocks
    fmt = formats.get(types[name]).name
    err, _ = run_gemv(device, fmt, f.get_tensor(name), variant, 3)
    assert err <= TOL, (name, fmt, err)


@pytest.mark.real_model
def test_gemma_lm_head_and_gather_sharded(device, gemma_blocks):
    """The tied 262,144 x 640 Q8_0 table (178 MB, over lavapipe's 128 MiB binding) as the lm head
    GEMV and the embedding gather: split by rows into chunks of at most 65,535 rows."""
    from pyapp.gpu import GpuBackend
    f, types = gemma_blocks
    name = "model.embed_tokens.weight"
    raw = f.get_tensor(name)
    V, D = 262144, 640
    W = deq(types[name], raw).astype(np.float32)
    m = Model(arch="test", config={}, hidden=D, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=D, vocab=V,
              max_context=16, causal=False, embed=[op("embed", "ids", "x", {"tokens": name})],
              layers=[[op("linear", "x", "y", {"w": name, "b": None})]], head=[])
    g = GpuBackend(device, m, 0, 1, embed=True, head=False, shapes={name: (V, D)}, dtypes={name: "q8_0"},
                   max_tokens=8, max_positions=16, variants={"linear": "row"}, widths={"y": V})
    g.write_weight(name, 0, raw)
    assert len(g.tensors[name].chunks) >= 5
    ids = [2, 262143, 65535, 65536, 131071]
    g.poison()
    x = g.forward(ids=ids, head=False, stop=0)
    assert np.array_equal(x, W[ids])
    g.forward(x=x[:2], head=False)
    y = g.read_activation("y", 2)
    assert relerr(y, x[:2].astype(np.float64) @ W.T.astype(np.float64)) <= TOL
    g.destroy()


# ----------------------------------------------------------------------------- op kinds

def op_backend(device, layers, shapes, widths, causal=False, H=4, Hkv=1, hd=8, max_tokens=8, max_positions=64):
    from pyapp.gpu import GpuBackend
    m = Model(arch="test", config={}, hidden=widths.get("x", H * hd), n_layers=len(layers), n_heads=H, n_kv_heads=Hkv,
              head_dim=hd, vocab=1, max_context=max_positions, causal=causal, embed=[], layers=layers, head=[])
    return GpuBackend(device, m, 0, len(layers), embed=False, head=False, shapes=shapes,
                      dtypes={n: "f32" for n in shapes}, max_tokens=max_tokens, max_positions=max_positions,
                      widths=widths)


def rms(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("wg", [1, 64])
def test_rms_norm_offset_and_group(device, wg):
    """(1 + w) on a 37-wide row; per-head norms of 3 heads of 12 in place and out of place."""
    rng = np.random.default_rng(0)
    T, D, G = 5, 37, 12
    w, wq = rng.standard_normal(D).astype(np.float32), rng.standard_normal(G).astype(np.float32)
    layer = [op("rms_norm", "x", "h", {"w": "nw"}, eps=1e-6, offset=1.0),
             op("rms_norm", "q", "k", {"w": "qw"}, eps=1e-6, offset=1.0, group=G),
             op("rms_norm", "q", "q", {"w": "qw"}, eps=1e-6, offset=1.0, group=G)]
    g = op_backend(device, [layer], {"nw": (D,), "qw": (G,)}, {"x": D, "q": 3 * G, "k": 3 * G})
    g.variants["norm_wg"] = wg
    g.write_weight("nw", 0, w)
    g.write_weight("qw", 0, wq)
    x = rng.standard_normal((T, D)).astype(np.float32)
    q = (rng.standard_normal((T, 3 * G)) * 3).astype(np.float32)
    g.poison()
    g.device.write(g.acts["q"], 0, q)
    g.forward(x=x, head=False)
    assert relerr(g.read_activation("h", T), rms(x, 1.0 + w.astype(np.float64), 1e-6)) <= 1e-5
    want = rms(q.reshape(T, 3, G), 1.0 + wq.astype(np.float64), 1e-6).reshape(T, 3 * G)
    assert relerr(g.read_activation("k", T), want) <= 1e-5
    assert relerr(g.read_activation("q", T), want) <= 1e-5
    g.destroy()


def test_scale_and_gelu_tanh_mul(device):
    rng = np.random.default_rng(1)
    T, D, F = 3, 40, 77
    layer = [op("scale", "x", "x", value=math.sqrt(640)),
             op("gelu_tanh_mul", ("g", "u"), "m"), op("gelu_tanh_mul", ("g", "u"), "g")]
    g = op_backend(device, [layer], {}, {"x": D, "g": F, "u": F, "m": F})
    x = rng.standard_normal((T, D)).astype(np.float32)
    gg = (rng.standard_normal((T, F)) * 4).astype(np.float32)
    u = rng.standard_normal((T, F)).astype(np.float32)
    g.poison()
    g.device.write(g.acts["g"], 0, gg)
    g.device.write(g.acts["u"], 0, u)
    g.forward(x=x, head=False)
    assert np.array_equal(g.read_activation("x", T), x * np.float32(math.sqrt(640)))
    a = gg.astype(np.float64)
    want = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3))) * u
    assert relerr(g.read_activation("m", T), want) <= 1e-5
    assert relerr(g.read_activation("g", T), want) <= 1e-5
    g.destroy()


def ref_attention(q, k, v, H, Hkv, hd, window, scale):
    """Causal attention of all rows [N, H*hd] over keys [N, Hkv*hd] with a sliding window."""
    N = q.shape[0]
    q = q.reshape(N, H, hd).astype(np.float64)
    k = np.repeat(k.reshape(N, Hkv, hd), H // Hkv, axis=1).astype(np.float64)
    v = np.repeat(v.reshape(N, Hkv, hd), H // Hkv, axis=1).astype(np.float64)
    s = np.einsum("thd,shd->hts", q, k) * scale
    t, sp = np.arange(N)[:, None], np.arange(N)[None, :]
    s = np.where((sp <= t) & (sp > t - window if window else True), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(N, H * hd)


@pytest.mark.parametrize("variant", ["row", "wg"])
def test_sliding_window_attention_ring_and_rope_bases(device, variant):
    """Two layers: a window of 5 keys on a ring of 5 + max(5, 4) = 10 slots (RoPE base 10,000)
    and a full layer (base 1,000,000); 23 tokens in steps of 4, 3, 1, ... (past the ring
    several times), then a rewind of 6 and the same tokens again."""
    H, Hkv, hd, W, N = 4, 1, 8, 5, 23
    rng = np.random.default_rng(2)

    def layer(i, theta, window):
        a = dict(layer=i, n_heads=H, n_kv_heads=Hkv, head_dim=hd, causal=True, scale=0.3)
        if window:
            a["window"] = window
        return [op("scale", "x", "x", value=1.0),          # the step's input (unused)
                op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=theta),
                op("attention", ("q", "k", "v"), f"a{i}", **a)]
    g = op_backend(device, [layer(0, 1e4, W), layer(1, 1e6, None)], {},
                   {"x": H * hd, "q": H * hd, "k": Hkv * hd, "v": Hkv * hd, "a0": H * hd, "a1": H * hd}, causal=True,
                   max_tokens=4)
    g.variants["attention"] = variant
    q = rng.standard_normal((N, H * hd)).astype(np.float32)
    k = rng.standard_normal((N, Hkv * hd)).astype(np.float32)
    v = rng.standard_normal((N, Hkv * hd)).astype(np.float32)

    def roped(x, heads, theta):
        half = hd // 2
        inv = 1.0 / theta ** (np.arange(half) * 2 / hd)
        ang = np.arange(N)[:, None] * inv
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x = x.reshape(N, heads, hd).astype(np.float64)
        return np.concatenate([x[..., :half] * c - x[..., half:] * s, x[..., half:] * c + x[..., :half] * s],
                              -1).reshape(N, -1)
    want = {i: ref_attention(roped(q, H, th), roped(k, Hkv, th), v, H, Hkv, hd, win, 0.3)
            for i, th, win in ((0, 1e4, W), (1, 1e6, 0))}
    cache = g.new_cache(32)
    assert cache.slots == {0: 10, 1: 32}

    def run(a, b):
        # q/k/v are written per step (rope rotates q and k in place; both layers read them)
        got = {0: [], 1: []}
        for lo in range(a, b, 4):
            hi = min(b, lo + 4)
            for i in (0, 1):
                for name, arr in (("q", q), ("k", k), ("v", v)):
                    g.device.write(g.acts[name], 0, np.ascontiguousarray(arr[lo:hi]))
                g.forward(x=np.zeros((hi - lo, H * hd), np.float32), cache=cache, start=i, stop=i + 1,
                          head=False)
                if i == 0:
                    cache.length = lo              # both layers see the same positions
                got[i].append(g.read_activation(f"a{i}", hi - lo))
        return {i: np.concatenate(v) for i, v in got.items()}
    got = run(0, N)
    for i in (0, 1):
        assert relerr(got[i], want[i]) <= 1e-5, i
    with pytest.raises(ValueError, match="rewinds at most 6"):
        cache.truncate(N - 7)
    cache.truncate(N - 6)
    again = run(N - 6, N)
    for i in (0, 1):
        assert relerr(again[i], want[i][N - 6:]) <= 1e-5, i
    g.destroy()


def test_attention_head_dim_256_over_200_keys(device):
    """Gemma's head size: with the `row` variant chosen, 200 keys of 256 values exceed what one
    invocation may loop on llvmpipe (65,535 iterations), so the lowering takes `wg` (rows past
    key 126 came out truncated before)."""
    H, Hkv, hd, T = 4, 1, 256, 200
    layer = [op("scale", "x", "x", value=1.0),
             op("attention", ("q", "k", "v"), "a", layer=0, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
                causal=True, scale=0.06)]
    g = op_backend(device, [layer], {}, {"x": 8, "q": H * hd, "k": Hkv * hd, "v": Hkv * hd, "a": H * hd},
                   causal=True, H=H, Hkv=Hkv, hd=hd, max_tokens=T, max_positions=T)
    assert g.variants["attention"] == "row"
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((T, n)).astype(np.float32) for n in (H * hd, Hkv * hd, Hkv * hd))
    for n, a in (("q", q), ("k", k), ("v", v)):
        g.device.write(g.acts[n], 0, a)
    g.forward(x=np.zeros((T, 8), np.float32), cache=g.new_cache(T), head=False)
    assert relerr(g.read_activation("a", T), ref_attention(q, k, v, H, Hkv, hd, 0, 0.06)) <= 1e-5
    g.destroy()


@pytest.mark.parametrize("hd,H,Hkv", [(256, 4, 1), (320, 2, 2), (12, 3, 1)])
def test_attention_wg_window_past_a_tile(device, hd, H, Hkv):
    """attention_wg's key tiles of 256 and output lanes (one dim per lane at 256, two at 320,
    key groups at 12): a window of 280 over a ring of 560 slots, 598 tokens in prefill steps of
    130 then decode steps past the ring's end, every row against numpy (also a full layer)."""
    W, N, TB = 280, 603, 130
    rng = np.random.default_rng(3)

    def layer(i, window):
        a = dict(layer=i, n_heads=H, n_kv_heads=Hkv, head_dim=hd, causal=True, scale=hd ** -0.5)
        if window:
            a["window"] = window
        return [op("scale", "x", "x", value=1.0), op("attention", ("q", "k", "v"), f"a{i}", **a)]
    g = op_backend(device, [layer(0, W), layer(1, None)], {},
                   {"x": 8, "q": H * hd, "k": Hkv * hd, "v": Hkv * hd, "a0": H * hd, "a1": H * hd},
                   causal=True, H=H, Hkv=Hkv, hd=hd, max_tokens=TB, max_positions=N)
    g.variants["attention"] = "wg"
    q, k, v = ((rng.standard_normal((N, n)) * 1.5).astype(np.float32) for n in (H * hd, Hkv * hd, Hkv * hd))
    cache = g.new_cache(N)
    got = {0: [], 1: []}
    steps = list(range(0, 598, TB)) + list(range(598, N))
    assert cache.slots == {0: 2 * W, 1: N}
    for lo, hi in zip(steps, steps[1:] + [N]):
        for i in (0, 1):
            for name, arr in (("q", q), ("k", k), ("v", v)):
                g.device.write(g.acts[name], 0, np.ascontiguousarray(arr[lo:hi]))
            g.forward(x=np.zeros((hi - lo, 8), np.float32), cache=cache, start=i, stop=i + 1, head=False)
            if i == 0:
                cache.length = lo
            got[i].append(g.read_activation(f"a{i}", hi - lo))
    for i, win in ((0, W), (1, 0)):
        assert relerr(np.concatenate(got[i]), ref_attention(q, k, v, H, Hkv, hd, win, hd ** -0.5)) <= 1e-5, i
    g.destroy()


# ----------------------------------------------------------------------------- fused decode layer

GEMMA_SHAPES = {
    # K % 4 != 0 everywhere (scalar loads): hidden 90, I 77, 3 heads of 24 over one kv head
    "odd": dict(hidden_size=90, intermediate_size=77, num_attention_heads=3, num_key_value_heads=1,
                head_dim=24, vocab_size=103),
    # K % 32 == 0 for q/k/v/gate/up (96) and down (160): Q4_1 blocks, 8-value loads; o's K = 80
    # (2 heads of 40) is no whole block: that one weight stays f32 in the Q4_1 file
    "vec8": dict(hidden_size=96, intermediate_size=160, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=40, vocab_size=131),
}


def random_gemma(path, shape, dtype, seed=0):
    """A 2-layer Gemma 3 (one sliding-window layer of 4 keys, one global layer) of random
    weights in `dtype` through synth's writer, norm weights N(0, 0.3^2) (1 + w: not the identity)."""
    import json

    from pyapp.synth import synth_model, tensor_plan, write_weights
    cfg = dict(model_type="gemma3_text", num_hidden_layers=2, max_position_embeddings=512, rms_norm_eps=1e-6,
               query_pre_attn_scalar=24, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
               rope_theta=1e6, rope_local_base_freq=1e4, tie_word_embeddings=True, bos_token_id=2,
               eos_token_id=1, hidden_activation="gelu_pytorch_tanh", **GEMMA_SHAPES[shape])
    plan = [(n, s, f, "normal", 0.3) if init == "const" else (n, s, f, init, c)
            for n, s, f, init, c in tensor_plan(synth_model(cfg), dtype)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    write_weights(path / formats.weight_file_name(dtype), plan, dtype, seed)
    return cfg


# per decode token: embed + scale, the head's GEMV with the final norm folded in, and per layer:
# q/k/v with the input norm folded in, q_norm + k_norm, attention (sliding: rope, kv_write,
# attention_wg; global: attention_split), o, post-norm + add, gate/up + gelu_tanh_mul with the
# pre-FFN norm folded in, down, post-norm + add (was 16 and 14 dispatches)
FUSED_LAYER = {"sliding_attention": 10, "full_attention": 8}


@pytest.mark.parametrize("shape,dtype,variant,norm_wg", [
    ("odd", "f32", "wg", 64), ("odd", "f32", "wg", 1), ("odd", "f32", "sg", 64), ("odd", "f32", "sg4", 64),
    ("vec8", "f16", "wg", 64), ("vec8", "f16", "sg4", 64), ("vec8", "f16", "sgw2", 64),
    ("vec8", "q4_1", "sgb2", 64), ("vec8", "q4_1", "wg", 64)])
def test_fused_gemma_matches_numpy(device, tmp_path, shape, dtype, variant, norm_wg):
    """A Gemma-shaped random model with the fusion rules on (offset norms folded into q/k/v and
    gate/up, the gate/up pair with tanh GELU, post-norm + residual add) against the numpy
    executor on the same file: prefill logits of every row, then decode steps past the window.
    norm_wg 1: the one-lane norm_group of CPU adapters (q_norm + k_norm in one dispatch)."""
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups on this adapter")
    cfg = random_gemma(tmp_path, shape, dtype)
    nb = NumpyBackend.load(tmp_path, dtype)
    gb = GpuBackend.load(tmp_path, dtype, device=device, variants={"linear": variant, "norm_wg": norm_wg, "attention": "wg"})
    rng = np.random.default_rng(5)
    prompt = [int(i) for i in rng.integers(0, cfg["vocab_size"], 6)]
    nc, gc = nb.new_cache(16), gb.new_cache(16)
    assert relerr(gb.forward(ids=prompt, cache=gc, all_logits=True),
                  nb.forward(ids=prompt, cache=nc, all_logits=True)) <= 1e-4, "prefill"
    per_token = 2 + sum(FUSED_LAYER[k] for k in cfg["layer_types"]) + 1
    for step, tok in enumerate(int(i) for i in rng.integers(0, cfg["vocab_size"], 5)):
        d0 = gb.stats["dispatches"]
        ref = nb.forward(ids=[tok], cache=nc)
        got = gb.forward(ids=[tok], cache=gc)
        assert relerr(got, ref) <= 1e-4, f"decode step {step}"
        assert gb.stats["dispatches"] - d0 == per_token, step
    gb.destroy()
