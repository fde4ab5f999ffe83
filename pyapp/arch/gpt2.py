"""GPT-2: pre-LayerNorm decoder, learned positions, Conv1D ([in, out]) weights, fused qkv."""
from __future__ import annotations

from ..errors import UnsupportedArchitecture as UnsupportedModel
from ..models import op
from ._common import maybe as _maybe, prefix as _prefix

NAME = 'gpt2'


def build(cfg, names):
    D = cfg["n_embd"]
    H = cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if cfg.get("scale_attn_by_inverse_layer_idx"):
        raise UnsupportedModel("gpt2: scale_attn_by_inverse_layer_idx is not supported")
    act = cfg.get("activation_function", "gelu_new")
    act_kind = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(act)
    if act_kind is None:
        raise UnsupportedModel(f"gpt2 activation {act!r} is not supported")
    p = _prefix(names, ["transformer.", ""], "wte.weight")
    embed = [op("embed", "ids", "x", {"tokens": p + "wte.weight", "positions": p + "wpe.weight"})]
    scale = (D // H) ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
    layers = []
    for i in range(cfg["n_layer"]):
        L = f"{p}h.{i}."
        # GPT-2 keeps Conv1D weights as [in, out].
        conv = lambda a, y, w: op("linear", a, y, {"w": w + ".weight", "b": w + ".bias"}, transposed=True)
        ln = lambda a, y, w: op("layer_norm", a, y, {"w": w + ".weight", "b": w + ".bias"}, eps=eps)
        layers.append([
            ln("x", "h", L + "ln_1"),
            conv("h", "qkv", L + "attn.c_attn"),
            op("split", "qkv", ("q", "k", "v"), sizes=(D, D, D)),
            op("attention", ("q", "k", "v"), "a", layer=i, n_heads=H, n_kv_heads=H, head_dim=D // H,
               causal=True, scale=scale),
            conv("a", "o", L + "attn.c_proj"),
            op("add", ("x", "o"), "x"),
            ln("x", "h", L + "ln_2"),
            conv("h", "f", L + "mlp.c_fc"),
            op(act_kind, "f", "f"),
            conv("f", "d", L + "mlp.c_proj"),
            op("add", ("x", "d"), "x"),
        ])
    lm_head = "lm_head.weight" if "lm_head.weight" in names else p + "wte.weight"
    head = [ln("x", "h", p + "ln_f"), op("linear", "h", "logits", {"w": lm_head, "b": None})]
    return dict(hidden=D, n_heads=H, n_kv_heads=H, head_dim=D // H, causal=True,
                n_layers=cfg["n_layer"], vocab=cfg["vocab_size"],
                max_context=cfg.get("n_positions", 1024),
                embed=embed, layers=layers, head=head)


def widths(model):
    """Output width of each linear's activation (the shape rules: config alone, no weights)."""
    D = model.hidden
    inter = model.config.get("n_inner") or 4 * D
    return {"qkv": 3 * D, "o": D, "f": inter, "d": D, "logits": model.vocab}
