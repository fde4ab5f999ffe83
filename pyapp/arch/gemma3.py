"""Gemma 3 text decoder (transformers' Gemma3ForCausalLM, model_type gemma3_text).

Per layer: RMSNorm -> q/k/v -> per-head RMSNorm on q and k -> RoPE (base 10,000 on the
sliding-window layers, 1,000,000 on the global ones) -> attention scaled by
query_pre_attn_scalar**-0.5 (a causal window of `sliding_window` keys on local layers) -> o ->
RMSNorm -> residual; RMSNorm -> GeGLU (tanh GELU) -> RMSNorm -> residual.  Embeddings are
scaled by sqrt(hidden) (rounded to float32, the embedding's dtype); the head is tied.

Norm weights follow transformers: the stored tensor is w and the norm multiplies by 1 + w
(`rms_norm` with offset=1).  llama.cpp's GGUF stores 1 + w; conversion subtracts the 1 once.
"""
from __future__ import annotations

import math

from ..errors import UnsupportedArchitecture
from ..models import op

NAME = "gemma3_text"


def _rope_thetas(cfg) -> dict:
    rp = cfg.get("rope_parameters") or {}
    for kind in ("full_attention", "sliding_attention"):
        if (rp.get(kind) or {}).get("rope_type", "default") != "default":
            raise UnsupportedArchitecture(f"gemma3 rope_type {rp[kind]['rope_type']!r} is not supported")
    return {"full_attention": float((rp.get("full_attention") or {}).get("rope_theta", cfg.get("rope_theta", 1e6))),
            "sliding_attention": float((rp.get("sliding_attention") or {}).get(
                "rope_theta", cfg.get("rope_local_base_freq", 1e4)))}


def layer_types(cfg) -> list:
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                        for i in range(n)]
    if len(types) != n or set(types) - {"full_attention", "sliding_attention"}:
        raise UnsupportedArchitecture(f"gemma3 layer_types {types!r} are not supported")
    return types


def build(cfg, names):
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or D // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    for k in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(k) is not None:
            raise UnsupportedArchitecture(f"gemma3 {k} = {cfg[k]} is not supported")
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedArchitecture("gemma3 use_bidirectional_attention is not supported")
    thetas = _rope_thetas(cfg)
    scale = float(cfg.get("query_pre_attn_scalar", hd)) ** -0.5
    window = cfg.get("sliding_window")
    p = "model."
    norm = lambda a, y, w, **kw: op("rms_norm", a, y, {"w": w}, eps=eps, offset=1.0, **kw)
    lin = lambda a, y, w: op("linear", a, y, {"w": w + ".weight", "b": None})
    embed = [op("embed", "ids", "x", {"tokens": p + "embed_tokens.weight"}),
             op("scale", "x", "x", value=math.sqrt(D))]
    layers = []
    for i, kind in enumerate(layer_types(cfg)):
        L = f"{p}layers.{i}."
        A, M = L + "self_attn.", L + "mlp."
        attn = dict(layer=i, n_heads=H, n_kv_heads=Hkv, head_dim=hd, causal=True, scale=scale)
        if kind == "sliding_attention" and window:
            attn["window"] = int(window)
        layers.append([
            norm("x", "h", L + "input_layernorm.weight"),
            lin("h", "q", A + "q_proj"),
            lin("h", "k", A + "k_proj"),
            lin("h", "v", A + "v_proj"),
            norm("q", "q", A + "q_norm.weight", group=hd),
            norm("k", "k", A + "k_norm.weight", group=hd),
            op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=thetas[kind]),
            op("attention", ("q", "k", "v"), "a", **attn),
            lin("a", "o", A + "o_proj"),
            norm("o", "o", L + "post_attention_layernorm.weight"),
            op("add", ("x", "o"), "x"),
            norm("x", "h", L + "pre_feedforward_layernorm.weight"),
            lin("h", "g", M + "gate_proj"),
            lin("h", "u", M + "up_proj"),
            op("gelu_tanh_mul", ("g", "u"), "m"),
            lin("m", "d", M + "down_proj"),
            norm("d", "d", L + "post_feedforward_layernorm.weight"),
            op("add", ("x", "d"), "x"),
        ])
    lm_head = "lm_head.weight" if "lm_head.weight" in names else p + "embed_tokens.weight"
    head = [norm("x", "h", p + "norm.weight"),
            op("linear", "h", "logits", {"w": lm_head, "b": None})]
    return dict(hidden=D, n_heads=H, n_kv_heads=Hkv, head_dim=hd, causal=True,
                n_layers=cfg["num_hidden_layers"], vocab=cfg["vocab_size"],
                max_context=cfg.get("max_position_embeddings", 32768),
                embed=embed, layers=layers, head=head)


def widths(model):
    """Output width of each linear's activation (the shape rules: config alone, no weights)."""
    inter = model.config["intermediate_size"]
    kv = model.n_kv_heads * model.head_dim
    return {"q": model.n_heads * model.head_dim, "k": kv, "v": kv, "o": model.hidden,
            "g": inter, "u": inter, "d": model.hidden, "logits": model.vocab}
