"""Choosing the split K: layers [0, K) on the server, [K, N) + final norm + head on the edge.

The default comes from the adapter (a CPU fallback adapter such as SwiftShader is slower than
the server's CPU, so it gets the highest split), its limits (the biggest tensor the edge must bind,
weight bytes against a memory budget), and a quick measured kernel speed: a GEMV of layer-like
shape timed on the device, turned into milliseconds per token per layer.  The person sees the
reason and can move the slider.  :func:`choose_split` is pure and runs on CPython for the tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# What a token may cost on the edge before we hand layers back to the server.
EDGE_BUDGET_MS_PER_TOKEN = 60.0
# Weight bytes the edge may hold on the GPU when the adapter says nothing better.
DEFAULT_MEMORY_BUDGET = 1 << 30


@dataclass
class AdapterInfo:
    available: bool = False
    reason: str = ""                 # why not, when not available
    vendor: str = ""
    architecture: str = ""
    description: str = ""
    is_fallback: bool = False
    max_buffer_size: int = 0
    max_storage_binding: int = 0
    features: list = field(default_factory=list)

    @property
    def is_cpu(self):
        return self.is_fallback or self.architecture.lower() in ("swiftshader", "llvmpipe", "lavapipe", "warp")

    def as_dict(self):
        d = dict(self.__dict__)
        d["is_cpu"] = self.is_cpu
        return d


@dataclass
class SplitChoice:
    split: int
    reason: str
    edge_ms_per_token: float | None = None
    edge_weight_bytes: int = 0
    min_split: int = 0
    max_split: int = 0

    def as_dict(self):
        return dict(self.__dict__)


def unit_bytes(t) -> int:
    """The most of tensor entry ``t`` one binding must hold: a matrix is split by rows over
    several (GpuBackend), so one row; a vector (or a tensor of unknown shape) whole."""
    shape = t.get("shape") or []
    return int(t["length"]) // int(shape[0]) if len(shape) == 2 and shape[0] else int(t["length"])


def layer_costs(manifest):
    """(bytes per layer list, embed bytes, head bytes, the biggest unit of the head one binding
    must hold) from a manifest."""
    n = int(manifest["n_layers"])
    per = [0] * n
    embed = head = 0
    biggest_head = 0
    for c in manifest["chunks"]:
        if c["id"].startswith("layer."):
            per[int(c["layer"])] += int(c["bytes"])
        elif c["id"] == "embed":
            embed += int(c["bytes"])
        elif c["id"] == "head":
            head += int(c["bytes"])
            biggest_head = max([biggest_head] + [unit_bytes(t) for t in c["tensors"]])
    return per, embed, head, biggest_head


def choose_split(manifest, adapter: AdapterInfo, gflops=None, budget_ms=EDGE_BUDGET_MS_PER_TOKEN,
                 memory_budget=DEFAULT_MEMORY_BUDGET):
    """The default split for this model on this adapter, with the reason in words.

    ``gflops``: measured f32 GEMV speed on the device (None: not measured).  Each weight byte
    costs 0.5 flop (f32, one multiply-add per 4-byte weight = 2 flops / 4 bytes).
    """
    n = int(manifest["n_layers"])
    per, embed, head, biggest = layer_costs(manifest)
    if not adapter.available:
        return SplitChoice(n, f"no WebGPU ({adapter.reason or 'unavailable'}): the server runs everything",
                           None, 0, n, n)
    if adapter.max_storage_binding and biggest > adapter.max_storage_binding:
        return SplitChoice(n, f"the head needs a {biggest / 1e6:.0f} MB buffer, over this adapter's "
                              f"binding limit of {adapter.max_storage_binding / 1e6:.0f} MB; server only",
                           None, 0, n, n)

    def edge_bytes(k):
        return edge_weight_bytes(manifest, k)

    def ms_per_token(k):
        if not gflops:
            return None
        flops = 0.5 * (sum(per[k:]) + head)    # the embedding is a gather, not a GEMV
        return flops / (gflops * 1e9) * 1e3

    # lowest split whose weights fit the memory budget
    min_k = 0
    while min_k < n and edge_bytes(min_k) > memory_budget:
        min_k += 1
    if adapter.is_cpu:
        k = n
        ms = ms_per_token(k)
        why = (f"{adapter.architecture or 'fallback'} is a CPU fallback adapter, slower than the "
               f"server's CPU: the server runs all {n} layers, the edge the final norm and head")
        if gflops:
            why += (f" (measured {gflops:.2g} GFLOP/s here: the head costs about {ms:.0f} ms a "
                    f"token on this GPU, all {n} layers would cost about {ms_per_token(0):.0f} ms)")
        return SplitChoice(k, why, ms, edge_bytes(k), min_k, n)
    if gflops is None:
        k = max(min_k, n // 2)
        return SplitChoice(k, "kernel speed not measured: half the layers on each side",
                           None, edge_bytes(k), min_k, n)
    k = min_k
    while k < n and ms_per_token(k) > budget_ms:
        k += 1
    ms = ms_per_token(k)
    why = (f"measured {gflops:.2g} GFLOP/s: layers {k}..{n - 1} on this GPU cost about {ms:.1f} ms "
           f"a token (budget {budget_ms:.0f} ms)")
    if k > min_k and min_k > 0:
        why += f"; at most {edge_bytes(min_k) / 1e6:.0f} MB of weights fit"
    return SplitChoice(k, why, ms, edge_bytes(k), min_k, n)


def edge_weight_bytes(manifest, k) -> int:
    """Weight bytes the edge holds at split ``k``: layers [k, N), the head, and at split 0 the
    embedding unless it is the head's own (tied)."""
    per, embed, head, _ = layer_costs(manifest)
    b = sum(per[k:]) + head
    if k == 0 and not manifest.get("tied_embeddings"):
        b += embed
    return b


def _size(b: int) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b} bytes"


def check_fit(manifest, k, max_binding, budget=None, per_layer_extra=0, budget_source="") -> None:
    """Refuse split ``k`` before any byte is fetched when it cannot fit: a row or vector over
    the device's binding limit, or weights (+ ``per_layer_extra`` per layer: the KV cache) over
    ``budget`` bytes of GPU memory; the message names the split that would fit."""
    from .errors import EdgeError

    n, name = int(manifest["n_layers"]), manifest.get("name", "the model")
    for c in manifest["chunks"]:
        on_edge = (c["id"] == "head" or (c["id"] == "embed" and k == 0)
                   or (c.get("layer") is not None and int(c["layer"]) >= k))
        big = max((t for t in c["tensors"]), key=unit_bytes, default=None) if on_edge else None
        if big is not None and max_binding and unit_bytes(big) > max_binding:
            raise EdgeError(f"{big['name']} needs {_size(unit_bytes(big))} in one GPU binding, over this "
                            f"device's limit of {_size(max_binding)}; run it on the server "
                            f"(backend: 'server')", "too_big")
    if not budget:
        return
    need = lambda j: edge_weight_bytes(manifest, j) + (n - j) * per_layer_extra  # noqa: E731
    if need(k) <= budget:
        return
    fits = next((j for j in range(k, n + 1) if need(j) <= budget), None)
    where = f" ({budget_source})" if budget_source else ""
    advice = (f"split {fits} or higher fits (layers {fits}..{n - 1} and the head: {_size(need(fits))})"
              if fits is not None and fits < n else
              f"split {n} fits (the head alone: {_size(need(n))})" if fits == n else
              "even the head alone does not: run it on the server (backend: 'server')")
    raise EdgeError(f"{name} at split {k} needs {_size(need(k))} of GPU memory, more than this "
                    f"device's budget of {_size(budget)}{where}; {advice}", "too_big")


# --------------------------------------------------------------------------- probing (browser)

async def probe_adapter():
    """AdapterInfo for this page (no device requested): probe.js."""
    from .jsfiles import load
    d = (await load("probe")()).to_py()
    return AdapterInfo(**{k: v for k, v in d.items() if k in AdapterInfo.__dataclass_fields__})


def gemv_bench_wgsl(rows: int, cols: int) -> str:
    """The speed probe's kernel (pyapp/kernels/gemv_bench.wgsl) for a rows x cols f32 matrix."""
    from string import Template

    from ..kernels import source
    return Template(source("gemv_bench")).substitute(ROWS=rows, COLS4=cols // 4)


async def measure_gflops(device, rows=1536, cols=576, iters=8):
    """Quick f32 GEMV speed on ``device`` (an MLP-sized matrix; ~50 ms on SwiftShader)."""
    from .jsfiles import load
    r = await load("gemv_bench")(device, gemv_bench_wgsl(rows, cols), rows, cols, iters)
    return float(r.gflops)


# --------------------------------------------------------------------------- progressive policy

# docs/edge.md "Policy": every EVAL_EVERY tokens, over the last EVAL_EVERY steps at the current
# split, the edge's milliseconds per layer against the server's. Edge over SLOW_MARGIN x the
# server's: half the edge's layers go back (up). Server over LOADED_MARGIN x the edge's: half the
# server's layers come here (down). Between the two nothing moves (the dead band).
EVAL_EVERY = 4
SLOW_MARGIN = 1.5
LOADED_MARGIN = 1.5


def _median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def per_layer_ms(split, n, steps, layer_bytes, head_bytes, reported=None):
    """(edge ms per layer, server ms per layer) from ``steps`` = [(edge ms, server ms)] at
    ``split``: medians (one slow step of a shared machine does not decide). The edge's step
    (its layers + norm + head) is spread over its weight bytes and priced at a mean layer's
    bytes, so the head (8 layers' worth in SmolLM2) counts for what it weighs and a split of N
    (only the head here) still gives a figure. The server's is the round trip over its layers,
    or what it ``reported`` (its recent ms per layer, all sessions) when that is higher."""
    n_edge = n - split
    mean_layer = sum(layer_bytes) / max(1, len(layer_bytes))
    edge_bytes = sum(layer_bytes[split:]) + head_bytes
    edge = _median([e for e, _ in steps]) * mean_layer / max(1, edge_bytes) if edge_bytes else \
        _median([e for e, _ in steps]) / (n_edge + 1)
    server = _median([s for _, s in steps]) / max(1, split)
    if reported:
        server = max(server, float(reported))
    return edge, server


def rebalance(split, n, steps, layer_bytes, head_bytes, reported=None, lowest=0, can_grow=True):
    """Where an 'auto' split goes after an evaluation: (new split, why) or (split, "").

    Up: edge per layer > SLOW_MARGIN x the server's -> split + half the edge's layers (at least
    one). Down: server per layer > LOADED_MARGIN x the edge's (so the edge is the faster) ->
    split - half the server's layers (at least one), never below ``lowest`` (the memory budget,
    or a split the edge was once too slow for), and only when ``can_grow`` (the layers can be
    streamed now). Pure: the runner gives it the measured steps."""
    if len(steps) < EVAL_EVERY:
        return split, ""
    edge, server = per_layer_ms(split, n, steps, layer_bytes, head_bytes, reported)
    if split < n and edge > SLOW_MARGIN * server:
        return min(n, split + max(1, (n - split) // 2)), (
            f"edge {edge:.1f} ms/layer > {SLOW_MARGIN} x server {server:.1f}")
    down = max(lowest, split // 2)
    if split > 0 and can_grow and down < split and server > LOADED_MARGIN * edge:
        return down, f"server {server:.1f} ms/layer > {LOADED_MARGIN} x edge {edge:.1f}"
    return split, ""
