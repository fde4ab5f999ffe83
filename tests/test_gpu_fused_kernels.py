"""The fused kernels (attention_split or attention_dec + attention_merge: RoPE + KV append +
split-context attention; add_norm: residual add + RMSNorm) against numpy, on lavapipe through
wgpu-py.

Each kernel is run on its own (pipelines and bind groups made here, not through the
executor) on fresh random inputs of odd sizes, outputs poisoned with NaN first; the
reference is written out in numpy from the definitions (rotate-half RoPE with float64
angles, softmax over the causal context, RMSNorm). Relative error (max |gpu - ref| /
max |ref|) <= 2e-5 in f32.
"""
from __future__ import annotations

from array import array

import numpy as np
import pytest

from pyapp import kernels

pytestmark = pytest.mark.gpu
pytest.importorskip("wgpu")

TOL = 2e-5
WDECL_F32 = ("@group(0) @binding(1) var<storage, read> w: array<f32>;\n"
             "fn ldw(i: u32) -> f32 { return w[i]; }")


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "non-finite output (poison survived?)"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


class Run:
    """Buffers from numpy arrays, one pass of dispatches, reads back as float32."""

    def __init__(self, device, T, pos0):
        self.d = device
        self.params = device.create_buffer(512, "uniform")
        device.write(self.params, 0, array("I", [T, pos0, 0, 0, 0, 1, 0, 0]))
        self.disp = []

    def buf(self, a):
        a = np.ascontiguousarray(a, np.float32)
        b = self.d.create_buffer(a.nbytes)
        self.d.write(b, 0, a)
        return b

    def poisoned(self, n):
        return self.buf(np.full(n, np.nan, np.float32))

    def add(self, src, entries, gx, gy=1):
        pipe = self.d.pipeline(src)
        self.disp.append((pipe, self.d.bind_group(pipe, {0: (self.params, 0, 32), **entries}), gx, gy, 1))

    def go(self):
        self.d.submit(self.d.record(self.disp))

    def read(self, b, n):
        return np.frombuffer(self.d.read(b, 0, n * 4), np.float32).copy()


def rope_table(positions, hd, theta):
    inv = 1.0 / theta ** (np.arange(hd // 2) * 2 / hd)
    ang = np.arange(positions)[:, None] * inv[None]
    return np.stack([np.cos(ang), np.sin(ang)], -1).astype(np.float32)   # [pos, hd/2, 2]


def rotate(x, cs):
    """x [..., hd] at the positions of cs [..., hd/2, 2] (rotate-half)."""
    h = x.shape[-1] // 2
    c, s = cs[..., 0], cs[..., 1]
    x0, x1 = x[..., :h].astype(np.float64), x[..., h:].astype(np.float64)
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], -1)


@pytest.mark.parametrize("H,HKV,HD,T,pos0,SL,NS", [
    (6, 2, 24, 1, 70, 64, 3),      # decode, 3 splits (the 3rd empty), GQA 3:1
    (6, 2, 24, 1, 70, 256, 1),     # decode, one split: normalized in the kernel
    (5, 5, 80, 3, 131, 64, 4),     # 3 rows at once, HD > 64 (2 dims per lane), keys cross a chunk
    (4, 1, 16, 7, 0, 512, 1),      # prefill from an empty cache, MQA
    (4, 1, 256, 1, 45, 32, 3),     # Gemma 3 270M's head_dim 256 (4 dims per lane), 32-key splits
])
def test_attention_split_matches_numpy(device, H, HKV, HD, T, pos0, SL, NS):
    check_attention(device, "attention_split", H, HKV, HD, T, pos0, SL, NS)


@pytest.mark.parametrize("H,HKV,HD,pos0,SL,NS", [
    (6, 2, 64, 70, 32, 4),         # GQA 3:1, mid-split, the 4th split empty
    (6, 2, 64, 64, 32, 4),         # this step's key the first of split 2
    (6, 2, 64, 63, 32, 3),         # the last key of split 1, split 2 empty
    (6, 2, 64, 0, 32, 3),          # empty cache: only this step's key
    (6, 2, 64, 20, 32, 1),         # one split: normalized in the kernel
    (4, 1, 16, 45, 32, 3),         # MQA, HD 16 (32 key groups of one vec4)
    (4, 1, 16, 90, 64, 2),         # 64-key splits: 2 lanes per key
    (8, 8, 128, 95, 32, 4),        # MHA, HD 128
    (6, 2, 128, 100, 64, 3),       # HD 128, 64-key splits
    (4, 1, 256, 45, 32, 3),        # Gemma 3 270M's head_dim 256
    (5, 5, 80, 77, 32, 3),         # HD 80: 20 vec4 (lanes past 6 key groups idle, keys past the split)
    (4, 2, 24, 33, 32, 2),         # HD 24: 6 vec4 over 4 lanes per key (indices past the row)
    (3, 1, 48, 50, 64, 1),         # HD 48, one 64-key split
])
def test_attention_dec_matches_numpy(device, H, HKV, HD, pos0, SL, NS):
    """attention_dec (decode only, T = 1) against the same reference as attention_split."""
    check_attention(device, "attention_dec", H, HKV, HD, 1, pos0, SL, NS)


def check_attention(device, kernel, H, HKV, HD, T, pos0, SL, NS):
    """`kernel` (+ attention_merge when NS > 1) against numpy: the output and the cache rows."""
    from pyapp.gpu import wgsl
    rng = np.random.default_rng(H * 1000 + HD + T)
    CAP, scale, theta = max(NS * SL, pos0 + T) + 5, HD ** -0.5, 10000.0
    cs = rope_table(CAP, HD, theta)
    q = rng.standard_normal((T, H, HD)).astype(np.float32)
    k = rng.standard_normal((T, HKV, HD)).astype(np.float32)
    v = rng.standard_normal((T, HKV, HD)).astype(np.float32)
    kc = rng.standard_normal((HKV, CAP, HD)).astype(np.float32)     # positions < pos0: rotated keys
    vc = rng.standard_normal((HKV, CAP, HD)).astype(np.float32)
    r = Run(device, T, pos0)
    bkc, bvc = r.buf(kc), r.buf(vc)
    subs = dict(H=H, HKV=HKV, HD=HD, HALF=HD // 2, CAP=CAP, SCALE=repr(scale), NS=NS, SL=SL,
                DPL=-(-HD // 64), **(wgsl.attn_dec_code(HD, SL) if kernel == "attention_dec" else {}))
    y = r.poisoned(T * H * HD)
    part = r.poisoned(T * H * NS * (HD + 2)) if NS > 1 else y
    r.add(kernels.render(kernel, **subs),
          {1: r.buf(cs), 2: r.buf(q), 3: r.buf(k), 4: r.buf(v), 5: bkc, 6: bvc, 7: part}, T * H, NS)
    if NS > 1:
        r.add(kernels.render("attention_merge", HD=HD, NS=NS, H=H), {1: part, 2: y}, T * H)
    r.go()
    # reference: rotate this step's q, k at positions pos0 + t; append; causal softmax
    pos = np.arange(pos0, pos0 + T)
    kref, vref = kc.astype(np.float64), vc.astype(np.float64)
    kref[:, pos] = rotate(k, cs[pos][:, None]).transpose(1, 0, 2)
    vref[:, pos] = v.transpose(1, 0, 2)
    qr = rotate(q, cs[pos][:, None]) * scale
    ref = np.zeros((T, H, HD))
    for t in range(T):
        for h in range(H):
            g = h // (H // HKV)
            sc = kref[g, :pos0 + t + 1] @ qr[t, h]
            w = np.exp(sc - sc.max())
            ref[t, h] = (w / w.sum()) @ vref[g, :pos0 + t + 1]
    assert relerr(r.read(y, T * H * HD).reshape(T, H, HD), ref) <= TOL
    # the cache holds this step's rotated k and v (rows < pos0 untouched)
    got_k = r.read(bkc, HKV * CAP * HD).reshape(HKV, CAP, HD)
    got_v = r.read(bvc, HKV * CAP * HD).reshape(HKV, CAP, HD)
    assert relerr(got_k[:, :pos0 + T], kref[:, :pos0 + T]) <= TOL
    np.testing.assert_array_equal(got_v[:, :pos0 + T], vref[:, :pos0 + T].astype(np.float32))


@pytest.mark.parametrize("D,T,add", [(577, 3, True), (4096, 1, True), (77, 2, False)])
def test_add_norm_matches_numpy(device, D, T, add):
    rng = np.random.default_rng(D + T)
    x = rng.standard_normal((T, D)).astype(np.float32)
    res = rng.standard_normal((T, D)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    r = Run(device, T, 0)
    bx, y = r.buf(x), r.poisoned(T * D)
    rdecl = ("@group(0) @binding(2) var<storage, read> r: array<f32>;\nfn ldr(i: u32) -> f32 { return r[i]; }"
             if add else "fn ldr(i: u32) -> f32 { return 0.0; }")
    src = kernels.render("add_norm", WDECL=WDECL_F32, RDECL=rdecl, D=D, EPS="1e-05",
                         ADD="true" if add else "false")
    r.add(src, {1: r.buf(w), **({2: r.buf(res)} if add else {}), 3: bx, 4: y}, T)
    r.go()
    u = x.astype(np.float64) + (res if add else 0)
    ref = u / np.sqrt((u * u).mean(-1, keepdims=True) + 1e-5) * w
    assert relerr(r.read(y, T * D).reshape(T, D), ref) <= TOL
    assert relerr(r.read(bx, T * D).reshape(T, D), u) <= 1e-7


# ----------------------------------------------------------------------------- through the executor
# The rewrite rules of pyapp/gpu/lower.py on whole (random, odd-shaped) llama models: logits of a
# prefill and of decode steps against the numpy executor (a separate implementation), on every
# reduction variant, short caches (one split) and long ones (split context + merge).

LLAMA_SHAPES = {
    # hidden 90: K % 4 != 0 (scalar loads), 5 heads of 18 over one kv head (MQA), I = 77
    "odd": dict(hidden_size=90, intermediate_size=77, num_attention_heads=5, num_key_value_heads=1,
                vocab_size=103, tie_word_embeddings=True),
    # vec4 loads, GQA 2:1, hd 32, untied head
    "vec4": dict(hidden_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=211, tie_word_embeddings=False),
    # the 4-dispatch decode layer's shapes: head_dim 48 with GQA 3:1 (q rows 144, k/v rows 48)
    "hd48": dict(hidden_size=144, intermediate_size=100, num_attention_heads=3, num_key_value_heads=1,
                 vocab_size=97, tie_word_embeddings=True),
    # head_dim 64, no GQA (1:1), q/k/v/o 192 rows
    "hd64": dict(hidden_size=192, intermediate_size=77, num_attention_heads=3, num_key_value_heads=3,
                 vocab_size=97, tie_word_embeddings=True),
    # head_dim 80 != hidden / heads, GQA 3:1, hidden 90 (scalar loads), o-projection 240 -> 90
    "hd80": dict(hidden_size=90, head_dim=80, intermediate_size=70, num_attention_heads=3,
                 num_key_value_heads=1, vocab_size=97, tie_word_embeddings=True),
}


def random_llama(path, shape, layers=2, seed=0):
    """config.json + model.safetensors of random weights (norms near 1)."""
    import json

    from safetensors.numpy import save_file

    from pyapp.arch import build_model
    from pyapp.gpu.shapes import infer_shapes
    cfg = dict(model_type="llama", num_hidden_layers=layers, max_position_embeddings=512,
               rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
               **LLAMA_SHAPES[shape])
    names = [f"model.layers.{i}.{n}.weight" for i in range(layers) for n in (
        "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    names += ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    shapes = infer_shapes(build_model(cfg, names))
    rng = np.random.default_rng(seed)
    t = {}
    for n in names:
        s = shapes[n]
        t[n] = ((1 + 0.1 * rng.standard_normal(s)) if len(s) == 1
                else rng.standard_normal(s) * (2 / s[1]) ** 0.5).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(path / "model.safetensors"))
    return cfg


GPU_VARIANTS = ["wg", "sg", "sg4", "sgw2", "wgw2"]
# the decode attention as attention_dec (attention_qkv off: CPU adapters choose it by default)
ATTN_DEC = {"attn_dec": True, "off": ["fuse_qkv_attention"]}


def uses_attention_dec(cache) -> bool:
    """Some dispatch planned on `cache` runs attention_dec (its bind groups live on the cache)."""
    return any("fn cur_key(" in key[0] for key in cache.groups)


@pytest.mark.parametrize("extra", [{"attn_dec": False}, ATTN_DEC], ids=["split", "attn_dec"])
@pytest.mark.parametrize("shape", ["odd", "vec4"])
@pytest.mark.parametrize("variant", GPU_VARIANTS)
def test_fused_llama_matches_numpy(device, tmp_path, shape, variant, extra):
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups on this adapter")
    cfg = random_llama(tmp_path / shape, shape)
    L = cfg["num_hidden_layers"]
    nb = NumpyBackend.load(tmp_path / shape)
    gb = GpuBackend.load(tmp_path / shape, device=device,
                         variants={"linear": variant, "norm_wg": 64, "attention": "wg", **extra})
    # attention_qkv off (or not on sgw, which takes no 4-dispatch layer): the q/k/v GEMV its own dispatch
    dec = extra["attn_dec"] and shape == "vec4"          # "odd": hd 18, HD % 8 != 0
    wide = variant.startswith(("sgw", "wgw"))             # no 4-dispatch layer on these
    per_layer = 5 if "off" in extra or wide else 4
    rng = np.random.default_rng(7)
    for capacity, prompt_len, n_splits in ((30, 9, 1), (400, 261, 13)):   # 32-key splits
        prompt = [int(i) for i in rng.integers(0, cfg["vocab_size"], prompt_len)]
        nc, gc = nb.new_cache(capacity), gb.new_cache(capacity)
        ref = nb.forward(ids=prompt, cache=nc, all_logits=True)
        got = gb.forward(ids=prompt, cache=gc, all_logits=True)
        assert relerr(got, ref) <= 1e-4, "prefill"
        tok = int(ref[-1].argmax())
        for step in range(4):
            d0 = gb.stats["dispatches"]
            ref = nb.forward(ids=[tok], cache=nc)
            got = gb.forward(ids=[tok], cache=gc)
            assert relerr(got, ref) <= 1e-4, f"decode step {step}"
            # embed + per layer (norm+qkv+rope+attention, merge+o+add, norm+gate/up+silu,
            # down+add) + head, whatever the split count
            assert gb.stats["dispatches"] - d0 == 1 + L * per_layer + 1
            tok = int(ref[-1].argmax())
        # sgw takes no attention_qkv, so its decode attention is fuse_rope_attention's
        assert uses_attention_dec(gc) == (dec and ("off" in extra or wide))


@pytest.mark.parametrize("shape", ["hd48", "hd64", "hd80"])
@pytest.mark.parametrize("variant", ["wg", "sg"])
def test_decode_layer_4_dispatches_matches_numpy(device, tmp_path, shape, variant):
    """The 4-dispatch decode layer (attention_qkv + the merge folded into the o-projection) at
    every context from 1 to 106 (1 to 4 active 32-key splits of a 128-key cache, so 31 / 32 /
    33 and 100+ all occur): logits of every step against the numpy executor; then the same
    steps with the rules off (`off`: the 6-dispatch layer of before) give the same logits."""
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    if variant.startswith("sg") and "subgroups" not in device.features:
        pytest.skip("no subgroups on this adapter")
    cfg = random_llama(tmp_path / shape, shape, seed=3)
    L = cfg["num_hidden_layers"]
    nb = NumpyBackend.load(tmp_path / shape)
    v = {"linear": variant, "norm_wg": 64, "attention": "wg"}
    gb = GpuBackend.load(tmp_path / shape, device=device, variants=v)
    old = GpuBackend.load(tmp_path / shape, device=device,
                          variants={**v, "off": ["fuse_qkv_attention", "fold_merge"]})
    rng = np.random.default_rng(11)
    nc, gc, oc = nb.new_cache(128), gb.new_cache(128), old.new_cache(128)
    ids = [int(i) for i in rng.integers(0, cfg["vocab_size"], 106)]    # fed, not sampled
    for n, tok in enumerate(ids):          # context n + 1: the first step is a 1-token prefill
        d0, o0 = gb.stats["dispatches"], old.stats["dispatches"]
        ref = nb.forward(ids=[tok], cache=nc)
        got = gb.forward(ids=[tok], cache=gc)
        assert relerr(got, ref) <= 1e-4, f"context {n + 1}"
        assert gb.stats["dispatches"] - d0 == 1 + 4 * L + 1
        if n in (0, 30, 32, 105):
            assert relerr(old.forward(ids=[tok], cache=oc), got) <= 1e-4, f"context {n + 1}, rules off"
            assert old.stats["dispatches"] - o0 == 1 + 6 * L + 1        # 128-key cache: 4 splits + merge
        else:
            old.forward(ids=[tok], cache=oc)


@pytest.mark.parametrize("extra", [{"attn_dec": False}, {"attn_dec": True}, {"attn_dec": True, "off": ["fold_merge"]}],
                         ids=["split", "attn_dec", "attn_dec-merge"])
@pytest.mark.parametrize("shape", ["hd48", "hd64", "hd80"])
def test_split_attention_every_context_matches_numpy(device, tmp_path, shape, extra):
    """fuse_rope_attention (the decode attention of GPU adapters: attention_qkv off) at every
    context from 1 to 106 of a 128-key cache
    (1 to 4 active 32-key splits; 31 / 32 / 33 occur): logits against the numpy executor;
    attention_split or attention_dec, the merge folded into the o-projection or attention_merge."""
    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    cfg = random_llama(tmp_path / shape, shape, seed=5)
    nb = NumpyBackend.load(tmp_path / shape)
    gb = GpuBackend.load(tmp_path / shape, device=device, variants={
        "linear": "wg", "norm_wg": 64, "attention": "wg", **extra,
        "off": ["fuse_qkv_attention", *extra.get("off", ())]})
    rng = np.random.default_rng(13)
    nc, gc = nb.new_cache(128), gb.new_cache(128)
    ids = [int(i) for i in rng.integers(0, cfg["vocab_size"], 106)]    # fed, not sampled
    for n, tok in enumerate(ids):
        assert relerr(gb.forward(ids=[tok], cache=gc), nb.forward(ids=[tok], cache=nc)) <= 1e-4, f"context {n + 1}"
    assert uses_attention_dec(gc) == extra["attn_dec"]


@pytest.mark.parametrize("variant,depth", [("wg", 2), ("row", 3)])
def test_pipelined_decode_equals_stepwise(device, tmp_path, variant, depth):
    """GpuBackend.decode (steps in flight, each embedding the token the GPU sampled) gives the
    ids of step() one token at a time, stops at a stop token like decode.generate, and leaves
    the cache where the step-by-step loop leaves it (the next step's logits are equal)."""
    from pyapp.decode import generate
    from pyapp.gpu import GpuBackend
    from pyapp.sampling import SamplingParams
    random_llama(tmp_path / "m", "vec4")
    v = {"linear": variant, "norm_wg": 64 if variant != "row" else 1, "attention": "wg" if variant != "row" else "row"}
    gb = GpuBackend.load(tmp_path / "m", device=device, variants=v)
    prompt = [5, 17, 200, 3, 99, 41, 7]
    for sp in (SamplingParams(), SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=11)):
        c1 = gb.new_cache(64)
        ref = generate(lambda t, n: gb.step(ids=t, cache=c1, params=sp, n=n), prompt, 20).ids
        c2 = gb.new_cache(64)
        assert gb.decode(prompt, c2, sp, 20, depth=depth).ids == ref
        stop = ref[6]
        c1, c2 = gb.new_cache(64), gb.new_cache(64)
        r1 = generate(lambda t, n: gb.step(ids=t, cache=c1, params=sp, n=n), prompt, 20, eos_ids=[stop]).ids
        r2 = gb.decode(prompt, c2, sp, 20, eos_ids=[stop], depth=depth).ids
        assert r2 == r1 == ref[:ref.index(stop) + 1]
        assert c2.length == c1.length
        assert relerr(gb.forward(ids=[r2[-1]], cache=c2), gb.forward(ids=[r1[-1]], cache=c1)) == 0


@pytest.mark.parametrize("extra", [{"attn_dec": False}, {"attn_dec": True}], ids=["split", "attn_dec"])
def test_gemma_split_merge_folded_into_o_projection(device, tmp_path, extra):
    """Gemma 3 (per-head q/k norms, a sliding-window layer, the post-attention norm between the
    o-projection and the residual add) keeps fuse_rope_attention, and its global layer's split
    merge folds into the o-projection (no add in that store): a tiny random Gemma 3 made by
    transformers, every context 1..45 of a 4-split cache against the numpy executor, one
    dispatch per token fewer than with `fold_merge` off."""
    torch = pytest.importorskip("torch")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from pyapp.gpu import GpuBackend
    from pyapp.numpy_backend import NumpyBackend
    cfg = Gemma3TextConfig(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                           max_position_embeddings=256, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    m = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for _n, t in m.named_parameters():
            if t.dim() == 1:
                t.copy_(0.1 * torch.randn_like(t))     # norm weights off zero (1 + w)
    m.save_pretrained(tmp_path, safe_serialization=True)
    v = {"linear": "wg", "norm_wg": 64, "attention": "wg", **extra}
    nb = NumpyBackend.load(tmp_path)
    gb = GpuBackend.load(tmp_path, device=device, variants=v)
    old = GpuBackend.load(tmp_path, device=device, variants={**v, "off": ["fold_merge"]})
    nc, gc, oc = nb.new_cache(100), gb.new_cache(100), old.new_cache(100)
    for n, tok in enumerate(np.random.default_rng(0).integers(0, 97, 45)):
        d0, o0 = gb.stats["dispatches"], old.stats["dispatches"]
        ref = nb.forward(ids=[int(tok)], cache=nc)
        assert relerr(gb.forward(ids=[int(tok)], cache=gc), ref) <= 1e-5, f"context {n + 1}"
        assert relerr(old.forward(ids=[int(tok)], cache=oc), ref) <= 1e-5, f"context {n + 1}, fold_merge off"
        assert gb.stats["dispatches"] - d0 == old.stats["dispatches"] - o0 - 1
    assert uses_attention_dec(gc) == extra["attn_dec"]
