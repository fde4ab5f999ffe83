"""BERT encoders (MiniLM, sentence-transformers): post-LayerNorm, learned positions, mean-pooled."""
from __future__ import annotations

from ..errors import UnsupportedArchitecture as UnsupportedModel
from ..models import op
from ._common import maybe as _maybe, prefix as _prefix

NAME = 'bert'


def build(cfg, names):
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    eps = cfg.get("layer_norm_eps", 1e-12)
    act = cfg.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedModel(f"bert hidden_act {act!r} is not supported")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModel("bert: only absolute position embeddings are supported")
    act_kind = "gelu" if act == "gelu" else "gelu_tanh"
    p = _prefix(names, ["", "bert."], "embeddings.word_embeddings.weight")
    E = p + "embeddings."
    embed = [
        op("embed", "ids", "x", {"tokens": E + "word_embeddings.weight",
                                 "positions": E + "position_embeddings.weight",
                                 "token_type": _maybe(names, E + "token_type_embeddings.weight")}),
        op("layer_norm", "x", "x", {"w": E + "LayerNorm.weight", "b": E + "LayerNorm.bias"}, eps=eps),
    ]
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}encoder.layer.{i}."
        lin = lambda a, y, w: op("linear", a, y, {"w": w + ".weight", "b": w + ".bias"})
        ln = lambda a, y, w: op("layer_norm", a, y, {"w": w + ".weight", "b": w + ".bias"}, eps=eps)
        layers.append([
            lin("x", "q", L + "attention.self.query"),
            lin("x", "k", L + "attention.self.key"),
            lin("x", "v", L + "attention.self.value"),
            op("attention", ("q", "k", "v"), "a", layer=i, n_heads=H, n_kv_heads=H, head_dim=D // H,
               causal=False, scale=(D // H) ** -0.5),
            lin("a", "o", L + "attention.output.dense"),
            op("add", ("x", "o"), "x"),
            ln("x", "x", L + "attention.output.LayerNorm"),
            lin("x", "f", L + "intermediate.dense"),
            op(act_kind, "f", "f"),
            lin("f", "d", L + "output.dense"),
            op("add", ("x", "d"), "x"),
            ln("x", "x", L + "output.LayerNorm"),
        ])
    head = [op("mean_pool", "x", "e"), op("l2_normalize", "e", "embedding")]
    return dict(hidden=D, n_heads=H, n_kv_heads=H, head_dim=D // H, causal=False,
                n_layers=cfg["num_hidden_layers"], vocab=cfg["vocab_size"],
                max_context=cfg.get("max_position_embeddings", 512),
                embed=embed, layers=layers, head=head)


def widths(model):
    """Output width of each linear's activation (the shape rules: config alone, no weights)."""
    D = model.hidden
    inter = model.config["intermediate_size"]
    return {"q": D, "k": D, "v": D, "o": D, "f": inter, "d": D}
