"""One definition of each model, shared by the server, the edge and the tests.

A model is a list of layers; a layer is a short list of `Op`s over named
tensors.  Every backend (numpy, WebGPU) executes the same ops, so this file is
the contract between them.  Stdlib only: it runs in Pyodide as well.

Named activations inside a step:
  ids     token ids of this step, [T]
  x       the residual stream, [T, D]
  other names are scratch, local to a layer.
Positions are implicit: the step's tokens sit at absolute positions
pos0 .. pos0+T-1, where pos0 is the number of tokens already in the KV cache.

The op kinds (llama.cpp's ggml op list is the model for this):
  embed        ids -> x        rows of `tokens` (+ `positions` at the absolute
                               position, + row 0 of `token_type`)
  rms_norm     a -> y          y = a / rms(a) * w                  (eps)
  layer_norm   a -> y          y = (a - mean) / std * w + b        (eps)
  linear       a -> y          y = a @ W.T + b, W is [out, in]; with
                               attrs["transposed"] W is [in, out] (GPT-2 Conv1D)
  split        a -> y1 y2 ..   columns of a, attrs["sizes"]
  rope         q k -> q k      rotate-half RoPE on absolute positions
  attention    q k v -> y      scaled dot-product attention over the layer's
                               KV cache (causal) or over the step (bidirectional)
  silu_mul     g u -> y        silu(g) * u
  gelu         a -> y          erf GELU
  gelu_tanh    a -> y          tanh approximation (GPT-2's gelu_new)
  add          a b -> y        residual add
  mean_pool    a -> y          mean over the T rows, [1, D]
  l2_normalize a -> y          y / ||y||
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from .store import UnsupportedArchitecture as UnsupportedModel  # one error type for both


@dataclass(frozen=True)
class Op:
    kind: str
    ins: tuple
    outs: tuple
    weights: dict = field(default_factory=dict)  # role -> tensor name (None = absent)
    attrs: dict = field(default_factory=dict)

    def tensor_names(self):
        return [n for n in self.weights.values() if n is not None]


def op(kind, ins, outs, weights=None, **attrs):
    ins = (ins,) if isinstance(ins, str) else tuple(ins)
    outs = (outs,) if isinstance(outs, str) else tuple(outs)
    return Op(kind, ins, outs, dict(weights or {}), attrs)


@dataclass
class Model:
    """Architecture-independent view of a model: embed ops, per-layer ops, head ops."""

    arch: str                # "llama" | "bert" | "gpt2"
    config: dict             # the HF config.json it came from
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    max_context: int
    causal: bool             # decoder (KV cache, logits) or encoder (pooled embedding)
    embed: list              # ops: ids -> x
    layers: list             # list of op lists: x -> x
    head: list               # ops: x -> logits | embedding
    eos_ids: tuple = ()
    bos_id: int | None = None

    @property
    def kind(self):
        return "causal_lm" if self.causal else "encoder"

    def ops(self, start=0, stop=None, embed=None, head=None):
        """The flat op list for layers [start, stop), with the embedding when the
        range starts at 0 and the head when it ends at N (overridable)."""
        stop = self.n_layers if stop is None else stop
        if not 0 <= start <= stop <= self.n_layers:
            raise ValueError(f"layer range [{start}, {stop}) outside 0..{self.n_layers}")
        embed = (start == 0) if embed is None else embed
        head = (stop == self.n_layers) if head is None else head
        out = list(self.embed) if embed else []
        for layer in self.layers[start:stop]:
            out += layer
        if head:
            out += self.head
        return out

    def tensors(self, ops):
        seen, names = set(), []
        for o in ops:
            for n in o.tensor_names():
                if n not in seen:
                    seen.add(n)
                    names.append(n)
        return names

    def layer_tensors(self, i):
        return self.tensors(self.layers[i])

    def embed_tensors(self):
        return self.tensors(self.embed)

    def head_tensors(self):
        return self.tensors(self.head)

    def kv_bytes_per_token(self, layers=None, itemsize=4):
        n = self.n_layers if layers is None else layers
        return 2 * n * self.n_kv_heads * self.head_dim * itemsize if self.causal else 0


# --------------------------------------------------------------------------- builders

def _prefix(names, candidates, probe):
    for p in candidates:
        if p + probe in names:
            return p
    raise UnsupportedModel(f"cannot find tensor {probe!r} under any of {candidates}")


def _maybe(names, name):
    return name if name in names else None


def build_llama(cfg, names):
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


def build_bert(cfg, names):
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


def build_gpt2(cfg, names):
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


BUILDERS = {"llama": build_llama, "bert": build_bert, "gpt2": build_gpt2}


def _ids(v):
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def build_model(config, tensor_names):
    """Model from an HF config dict and the set of tensor names in its safetensors."""
    arch = config.get("model_type")
    if arch not in BUILDERS:
        raise UnsupportedModel(
            f"unsupported architecture {arch!r}; supported: {', '.join(sorted(BUILDERS))}")
    names = set(tensor_names)
    parts = BUILDERS[arch](config, names)
    model = Model(arch=arch, config=config, eos_ids=_ids(config.get("eos_token_id")),
                  bos_id=config.get("bos_token_id"), **parts)
    missing = [n for n in model.tensors(model.ops()) if n not in names]
    if missing:
        raise UnsupportedModel(f"{arch} model is missing tensors: {', '.join(missing[:5])}"
                               + (" ..." if len(missing) > 5 else ""))
    return model


# --------------------------------------------------------------------------- safetensors headers

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}


def parse_safetensors_header(raw: bytes):
    """(header dict, data start offset) from the first bytes of a .safetensors file."""
    if len(raw) < 8:
        raise ValueError("safetensors file too short")
    n = struct.unpack("<Q", raw[:8])[0]
    if len(raw) < 8 + n:
        raise ValueError(f"need {8 + n} bytes of header, have {len(raw)}")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return parse_safetensors_header(struct.pack("<Q", n) + f.read(n))


def weight_files(model_dir, dtype="f32"):
    """{tensor name: file path} for a store folder (single or sharded safetensors)."""
    from pathlib import Path
    d = Path(model_dir)
    stem = "model" if dtype == "f32" else f"model.{dtype}"
    index = d / f"{stem}.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: d / v for k, v in wm.items()}
    f = d / f"{stem}.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"{d.name} has no {dtype} weights ({f.name})")
    header, _ = read_safetensors_header(f)
    return {k: f for k in header}


def load_model_dir(model_dir, dtype="f32"):
    """Model (the op lists) from a store folder; reads config.json and headers only."""
    from pathlib import Path
    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    return build_model(config, weight_files(d, dtype).keys())
