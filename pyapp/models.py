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
  rms_norm     a -> y          y = a / rms(a) * (offset + w)       (eps; attrs["offset"], default 0:
                               Gemma's 1 + w; attrs["group"]: normalize each run of `group`
                               columns on its own, w has `group` values: per-head q/k norms)
  layer_norm   a -> y          y = (a - mean) / std * w + b        (eps)
  linear       a -> y          y = a @ W.T + b, W is [out, in]; with
                               attrs["transposed"] W is [in, out] (GPT-2 Conv1D)
  split        a -> y1 y2 ..   columns of a, attrs["sizes"]
  rope         q k -> q k      rotate-half RoPE on absolute positions
  attention    q k v -> y      scaled dot-product attention over the layer's
                               KV cache (causal) or over the step (bidirectional);
                               attrs["window"] W: a query at position p sees keys
                               p-W+1 .. p only (sliding window; the cache keeps W)
  silu_mul     g u -> y        silu(g) * u
  gelu         a -> y          erf GELU
  gelu_tanh    a -> y          tanh approximation (GPT-2's gelu_new)
  gelu_tanh_mul g u -> y       gelu_tanh(g) * u (GeGLU)
  scale        a -> y          y = a * float32(attrs["value"])
  add          a b -> y        residual add
  mean_pool    a -> y          mean over the T rows, [1, D]
  l2_normalize a -> y          y / ||y||
"""
from __future__ import annotations

from dataclasses import dataclass, field



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

    arch: str                # a key of pyapp.arch.ARCHS
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

    @property
    def tied_embeddings(self) -> bool:
        """The head's linear reads the token embedding (one tensor serves both ends)."""
        tok = next((o.weights["tokens"] for o in self.embed if o.kind == "embed"), None)
        return tok is not None and tok in self.head_tensors()


def attention_windows(model: Model) -> dict:
    """{layer: W} of the layers whose attention sees a sliding window of W keys."""
    return {i: o.attrs["window"] for i, layer in enumerate(model.layers)
            for o in layer if o.kind == "attention" and o.attrs.get("window")}


def check_rewind(length: int, n: int, rings: dict) -> None:
    """Raise unless a cache of `length` tokens may be truncated to `n`: `rings` maps each
    sliding-window layer to (slots, window) of its ring, which still holds every key position
    n needs only if the rewind is at most slots - window + 1 tokens (0 always works)."""
    if not 0 <= n <= length:
        raise ValueError(f"cannot truncate a cache of {length} tokens to {n}")
    for slots, w in rings.values():
        depth = slots - w + 1
        if n and length - n > depth:
            raise ValueError(f"a sliding-window cache rewinds at most {depth} tokens "
                             f"(asked {length - n}); rewind to 0 instead")
