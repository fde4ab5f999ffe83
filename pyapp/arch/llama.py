"""Llama (SmolLM2, TinyLlama, Llama 2/3 without rope scaling): pre-RMSNorm decoder, GQA, RoPE, SwiGLU."""
from __future__ import annotations

from ..errors import UnsupportedArchitecture as UnsupportedModel
from ..models import op
from ._common import maybe as _maybe, prefix as _prefix

NAME = 'llama'


def build(cfg, names):
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or D // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    rope_params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or None
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise UnsupportedModel(f"llama rope_scaling {scaling!r} is not supported")
    if rope_params.get("rope_type", "default") != "default":
        raise UnsupportedModel(f"llama rope_type {rope_params['rope_type']!r} is not supported")
    p = _prefix(names, ["model.", ""], "embed_tokens.weight")
    embed = [op("embed", "ids", "x", {"tokens": p + "embed_tokens.weight"})]
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}layers.{i}."
        A, M = L + "self_attn.", L + "mlp."
        lin = lambda a, y, w: op("linear", a, y, {"w": w + ".weight", "b": _maybe(names, w + ".bias")})
        layers.append([
            op("rms_norm", "x", "h", {"w": L + "input_layernorm.weight"}, eps=eps),
            lin("h", "q", A + "q_proj"),
            lin("h", "k", A + "k_proj"),
            lin("h", "v", A + "v_proj"),
            op("rope", ("q", "k"), ("q", "k"), n_heads=H, n_kv_heads=Hkv, head_dim=hd, theta=float(theta)),
            op("attention", ("q", "k", "v"), "a", layer=i, n_heads=H, n_kv_heads=Hkv, head_dim=hd,
               causal=True, scale=hd ** -0.5),
            lin("a", "o", A + "o_proj"),
            op("add", ("x", "o"), "x"),
            op("rms_norm", "x", "h", {"w": L + "post_attention_layernorm.weight"}, eps=eps),
            lin("h", "g", M + "gate_proj"),
            lin("h", "u", M + "up_proj"),
            op("silu_mul", ("g", "u"), "m"),
            lin("m", "d", M + "down_proj"),
            op("add", ("x", "d"), "x"),
        ])
    lm_head = "lm_head.weight" if "lm_head.weight" in names else p + "embed_tokens.weight"
    head = [
        op("rms_norm", "x", "h", {"w": p + "norm.weight"}, eps=eps),
        op("linear", "h", "logits", {"w": lm_head, "b": None}),
    ]
    return dict(hidden=D, n_heads=H, n_kv_heads=Hkv, head_dim=hd, causal=True,
                n_layers=cfg["num_hidden_layers"], vocab=cfg["vocab_size"],
                max_context=cfg.get("max_position_embeddings", 2048),
                embed=embed, layers=layers, head=head)


def widths(model):
    """Output width of each linear's activation (the shape rules: config alone, no weights)."""
    c = model.config
    inter = c["intermediate_size"]
    kv = model.n_kv_heads * model.head_dim
    return {"q": model.n_heads * model.head_dim, "k": kv, "v": kv, "o": model.hidden,
            "g": inter, "u": inter, "d": model.hidden, "logits": model.vocab}
