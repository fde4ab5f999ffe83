"""Tensor shapes and activation widths of a model from its config alone: the browser builds a
GpuBackend before any weight byte arrives.  Shapes are in values ([rows, cols]) whatever
the weight format; the architecture's own width rules come from the arch registry."""
from __future__ import annotations

from ..arch import widths as arch_widths
from ..models import Model


def infer_shapes(model: Model):
    """{tensor name: shape} from the config alone (the browser builds a backend
    before any weight byte arrives)."""
    c = model.config
    D, V = model.hidden, model.vocab
    width = arch_widths(model)
    acts = activation_widths(model, width)
    shapes = {}
    for o in model.ops():
        w = o.weights
        if o.kind == "linear":
            n, k = width[o.outs[0]], acts[o.ins[0]]
            shapes[w["w"]] = (k, n) if o.attrs.get("transposed") else (n, k)
            if w.get("b"):
                shapes[w["b"]] = (n,)
        elif o.kind in ("rms_norm", "layer_norm"):
            for r in ("w", "b"):
                if w.get(r):
                    shapes[w[r]] = (o.attrs.get("group") or acts[o.ins[0]],)
        elif o.kind == "embed":
            shapes[w["tokens"]] = (V, D)
            if w.get("positions"):
                shapes[w["positions"]] = (c.get("max_position_embeddings") or c.get("n_positions"), D)
            if w.get("token_type"):
                shapes[w["token_type"]] = (c.get("type_vocab_size", 2), D)
    return shapes


def activation_widths(model: Model, width: dict):
    D = model.hidden
    acts = {"x": D, "h": D, "a": model.n_heads * model.head_dim, "e": D, "embedding": D}
    acts.update(width)
    for o in model.ops():
        if o.kind in ("silu_mul", "gelu", "gelu_tanh", "gelu_tanh_mul", "scale", "add", "rms_norm",
                      "layer_norm"):
            acts.setdefault(o.outs[0], acts[o.ins[0]])
        elif o.kind == "split":
            for name, s in zip(o.outs, o.attrs["sizes"]):
                acts[name] = s
    return acts


def widths_from_shapes(model, shapes, extra=None):
    width = dict(extra or {})
    for o in model.ops():
        if o.kind == "linear":
            s = shapes[o.weights["w"]]
            width[o.outs[0]] = s[1] if o.attrs.get("transposed") else s[0]
    return activation_widths(model, width)
