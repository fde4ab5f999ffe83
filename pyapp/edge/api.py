"""The edge's API: what ``window.pyapp`` (the console, the page) and ``import pyapp`` (Python in
the page) call.  Python names, snake_case options; the JS side takes camelCase too.

    await generate(prompt, model=..., split=..., format=..., max_new_tokens=64, greedy=True,
                   chat=False, temperature=1.0, top_p=1.0, top_k=0, seed=0, on_token=None, wait=True)
        -> {"promptIds", "ids", "text", "stats"}
    await embed(texts, model=..., split=..., format=..., wait=True) -> [[float, ...], ...]
    await list_formats(model) -> {model, default, formats: [{format, bytes, vs_f32}]}  (JS: formats())
    await tokenize(text, model=..., chat=False)         -> [int, ...]
    await default_split(model) -> {split, reason, ...};  await adapter() -> {...}
    await list_models() -> {object, data: [{id, kind, n_layers, ...}]}  (JS: models());  stats(), stop(),
    await run_python(code)

* Every option is checked first (:mod:`.options`): an unknown name, a wrong type or a value out
  of range fails with one sentence naming the option; ``embed`` on a decoder and ``generate`` on
  an encoder say so.  Without ``model`` the server's first model of the right kind is used.
* One GPU job at a time (``state.lock``): a second call waits its turn, or with ``wait=False``
  fails at once with code ``busy``.
* ``format``: which of the model's weight files (f32, f16, q4_1, q8_0, q4_k_m: what the server's
  ``/v1/models`` lists as its ``dtypes``) the edge streams and the server's head layers run;
  default: the smallest in bytes (every format is u32-packed, so every adapter runs each).
* Weights are loaded once per (model, dtype, split) and kept while they fit
  :data:`RESIDENT_BUDGET` (least recently used out first); ``stats["weight_bytes"]`` is what this
  call streamed (0 when warm).
* Without WebGPU (or ``backend="server"``) generation and embeddings go to the server's
  OpenAI-style API, still streamed token by token; ``stats["backend"]`` and ``["reason"]`` say so.
* The ``*_js`` entries (made by :func:`install`) wrap each call for JS: errors become one JS
  ``Error`` (``api.js``, :func:`.errors.describe`).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict

from ..decode import check_context, generate_async
from ..sampling import SamplingParams
from . import options as op
from . import split as splitmod
from . import stream
from .errors import EdgeError, describe

# GPU memory the loaded tails may hold together before the least recently used is dropped.
RESIDENT_BUDGET = 1536 << 20


class _State:
    def __init__(self):
        self.base_url = ""
        self.adapter = None          # split.AdapterInfo
        self.device = None
        self.device_error = None
        self.gflops = None
        self.server_models = None    # the server's /v1/models data
        self.models = {}             # (name, format) -> EdgeModel
        self.manifests = {}          # (name, format or None) -> manifest
        self.tokenizers = {}         # name -> Tokenizer (one per model, whatever the format)
        self.runners = OrderedDict()  # (name, dtype, split) -> session.SplitRunner, LRU order
        self.lock = asyncio.Lock()   # one GPU job at a time
        self.probe_lock = asyncio.Lock()   # the GEMV timing runs once, whoever asks first
        self.stop_requested = False
        self.last_stats = {}
        self.load_stats = {}         # (name, dtype, split) -> stream.LoadStats dict
        self.ffi = 0


state = _State()
_emit_js = None


def _emit(kind, detail):
    """A ``pyapp:<kind>`` DOM event for the page (status lines, stats): one FFI crossing."""
    global _emit_js
    if not stream.IS_PYODIDE:
        return
    if _emit_js is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        _emit_js = run_js("((k, s) => globalThis.dispatchEvent(new CustomEvent('pyapp:' + k, { detail: JSON.parse(s) })))")
    _emit_js(kind, json.dumps(detail))
    state.ffi += 1


def status(msg, **kw):
    _emit("status", dict(kw, message=msg))


# --------------------------------------------------------------------------- models


class EdgeModel:
    """A model's manifest, op lists and tokenizer on the edge (no weights)."""

    def __init__(self, name, manifest, model, tokenizer):
        self.name = name
        self.manifest = manifest
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = list(manifest["eos_ids"])   # the server's own: config + generation_config

    @classmethod
    async def load(cls, name, manifest, base_url=""):
        from ..arch import build_model

        names = {t["name"] for c in manifest["chunks"] for t in c["tensors"]}
        model = build_model(manifest["config"], names)
        tok = state.tokenizers.get(name)
        if tok is None:
            tok = state.tokenizers[name] = await cls.load_tokenizer(manifest, base_url)
        return cls(name, manifest, model, tok)

    @staticmethod
    async def load_tokenizer(manifest, base_url=""):
        from ..tokenizer import Tokenizer, load_js_modules

        await load_js_modules()
        tk = manifest["tokenizer"]
        tok_json = await stream.fetch_doc(stream.absolute_url(base_url, tk["tokenizer.json"]), as_json=True)
        config = None
        if tk.get("tokenizer_config.json"):
            config = await stream.fetch_json(stream.absolute_url(base_url, tk["tokenizer_config.json"]))
        tok = Tokenizer.from_json(tok_json, config)
        # each sequence runs at its own length, and one past the context is refused, not cut:
        # tokenizer.json's padding/truncation (MiniLM's pads and cuts at 128) would change the
        # embedding; the server and the CLI do the same
        tok.no_padding()
        tok.no_truncation()
        return tok

    def prompt_ids(self, prompt, chat=False):
        if chat:
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(prompt).ids


async def list_models():
    """The server's ``/v1/models`` reply: ``{object, data: [{id, kind ("causal_lm" | "encoder"),
    n_layers, context, ...}]}`` (JS ``pyapp.models()``; in Python ``pyapp.models`` is the op-list
    module)."""
    if state.server_models is None:
        try:
            state.server_models = await stream.fetch_json(state.base_url + "/v1/models")
        except EdgeError:
            raise
        except Exception as e:    # noqa: BLE001 - a JS network Error (offline, server gone): one shape
            d = describe(e)
            raise EdgeError(d["message"], d["code"] if d["code"] != "internal" else "network") from e
    return state.server_models


async def _has_server() -> bool:
    """A pyapp server answers here (a static site or an offline page has none: /v1/models fails)."""
    try:
        await list_models()
    except EdgeError:
        return False
    return True


async def _model_name(name, kind):
    """``name``, or without one the server's first model of ``kind``."""
    if name is not None:
        return name
    try:
        ms = (await list_models()).get("data") or []
    except EdgeError as e:
        raise EdgeError(f"no model was given and the server's model list is unavailable ({e}): "
                        "pass the option model", "bad_option", "model") from e
    hit = next((m["id"] for m in ms if m.get("kind") == kind), None)
    if hit is None:
        what = "text-generation" if kind == "causal_lm" else "embedding"
        raise EdgeError(f"this server has no {what} model", "wrong_model", "model")
    return hit


async def get_model(name, fmt=None):
    """The EdgeModel of ``name`` in format ``fmt`` (checked against what the model has; None:
    the smallest it has)."""
    fmt = await resolve_format(name, fmt)
    em = state.models.get((name, fmt))
    if em is None:
        status(f"reading the manifest of {name}", phase="manifest")
        em = await EdgeModel.load(name, await _manifest(name, fmt), state.base_url)
        state.models[(name, fmt)] = em
    return em


# --------------------------------------------------------------------------- formats


async def _offered(name):
    """The formats the server has for ``name`` (``/v1/models``: ``dtypes``; a static site's list:
    its one ``pyapp.dtype``), or None without a list (offline: the saved manifest is the one)."""
    try:
        ms = (await list_models()).get("data") or []
    except EdgeError:
        return None
    for m in ms:
        if m.get("id") == name:
            have = m.get("dtypes") or [(m.get("pyapp") or {}).get("dtype")]
            return [f for f in have if f] or None
    raise EdgeError(f"unknown model {name!r}{await _have()}", "bad_option", "model")


async def _manifest(name, fmt, listed=True):
    """The manifest of ``name`` in ``fmt``, fetched once: ``?dtype=fmt`` when the server listed
    the format, else (``listed=False``: no list, e.g. offline) the one the site serves."""
    m = state.manifests.get((name, fmt))
    if m is None:
        url = f"/models/{name}/manifest.json" + (f"?dtype={fmt}" if listed else "")
        try:
            m = await stream.fetch_json(stream.absolute_url(state.base_url, url))
        except EdgeError as e:
            if e.code != "bad_input" or "manifest.json" not in str(e):
                raise
            raise EdgeError(f"unknown model {name!r}{await _have()}", "bad_option", "model") from e
        state.manifests[(name, m.get("dtype", "f32") if fmt is None else fmt)] = m
    return m


def weight_bytes(manifest):
    """The bytes of every weight tensor of a manifest, each once (a tied table is one tensor)."""
    seen = {}
    for c in manifest["chunks"]:
        for t in c["tensors"]:
            seen[t["name"]] = int(t["length"])
    return sum(seen.values())


async def format_sizes(name):
    """{format: weight bytes} of every format ``name`` has here (cheapest first)."""
    offered = await _offered(name)
    if offered is None:               # no list: the manifest the site serves is the only one
        m = await _manifest(name, None, listed=False)
        return {m.get("dtype", "f32"): weight_bytes(m)}
    sizes = {f: weight_bytes(await _manifest(name, f)) for f in offered}
    return dict(sorted(sizes.items(), key=lambda kv: (kv[1], kv[0])))


async def resolve_format(name, fmt=None):
    """``fmt`` if ``name`` has it, else one sentence naming the option and the formats it has;
    None: the smallest it has (all our formats run on every adapter: u32-packed blocks)."""
    sizes = await format_sizes(name)
    if fmt is None:
        return next(iter(sizes))
    if fmt not in sizes:
        raise EdgeError(f"option format must be one of {', '.join(sizes)} for {name}, not {fmt!r}",
                        "bad_option", "format")
    return fmt


async def list_formats(model=None):
    """``{model, default, formats: [{format, bytes, vs_f32}]}``: the formats ``model`` has here,
    each one's weight bytes (every tensor once) and its size against f32 (None without f32)."""
    name = await _model_name(op.check({"model": model}, op.MODEL_ONLY).get("model"), "causal_lm")
    sizes = await format_sizes(name)
    f32 = sizes.get("f32")
    return {"model": name, "default": next(iter(sizes)),
            "formats": [{"format": f, "bytes": b, "vs_f32": round(b / f32, 4) if f32 else None}
                        for f, b in sizes.items()]}


async def _have():
    """`` (this server has: a, b)``, or nothing when the list is unavailable."""
    try:
        ms = (await list_models()).get("data") or []
    except EdgeError:
        return ""
    return f" (this server has: {', '.join(m['id'] for m in ms) or 'no models'})"


async def _model_for(name, want, fmt=None):
    """The EdgeModel for a call that needs a decoder ("causal_lm") or an encoder, in ``fmt``."""
    em = await get_model(await _model_name(name, want), fmt)
    if em.model.causal and want == "encoder":
        raise EdgeError(f"{em.name} is a text-generation model ({em.model.arch}), not an embedding "
                        "model: use generate(), or embed() with an encoder such as the server's "
                        "embedding models", "wrong_model", "model")
    if not em.model.causal and want == "causal_lm":
        raise EdgeError(f"{em.name} is an embedding model ({em.model.arch}): use embed(), not generate()",
                        "wrong_model", "model")
    return em


# --------------------------------------------------------------------------- the GPU


async def adapter_info():
    if state.adapter is None:
        state.adapter = await splitmod.probe_adapter()
    return state.adapter


async def get_device():
    """The WebGPU device, or None (with ``state.device_error`` saying why)."""
    if state.device is not None or state.device_error is not None:
        return state.device
    ad = await adapter_info()
    if not ad.available:
        state.device_error = ad.reason
        return None
    try:
        from ..gpu import browser
        state.device = await browser.request_device(limits=_gpu_limits())
    except Exception as e:  # noqa: BLE001 - the page falls back to the server and says why
        state.device_error = f"could not open a WebGPU device: {describe(e)['message']}"
    return state.device


def _gpu_limits() -> str:
    """"default" when the page URL asks for WebGPU's default buffer sizes (``?gpulimits=default``:
    what a small GPU offers, to exercise sharded tensors), else "max"."""
    import js  # type: ignore[import-not-found]
    return "default" if "gpulimits=default" in str(getattr(js.location, "search", "")) else "max"


def memory_budget(o) -> tuple:
    """(bytes of GPU memory the edge may fill, where that figure comes from): the ``gpu_memory``
    option, else half of ``navigator.deviceMemory`` (the RAM a CPU or integrated GPU shares with
    the page), else (None, "") when nothing can be learned (only the binding limits are checked)."""
    if o.get("gpu_memory"):
        return int(o["gpu_memory"]), "the gpuMemory option"
    import js  # type: ignore[import-not-found]
    gib = getattr(js.navigator, "deviceMemory", None)
    if isinstance(gib, (int, float)) and gib > 0:
        return int(gib * (1 << 30) // 2), f"half of navigator.deviceMemory = {gib:g} GiB"
    return None, ""


async def _choose_split(em):
    """The split the page starts with: from the adapter (CPU fallback, limits) and a quick
    GEMV timing on the device (measured once per page, ~50 ms)."""
    ad = await adapter_info()
    dev = await get_device()
    if dev is not None and state.gflops is None:
        async with state.probe_lock:
            if state.gflops is None:
                state.gflops = await splitmod.measure_gflops(dev.device)
    if dev is None:
        ad = splitmod.AdapterInfo(False, state.device_error or ad.reason)
    return splitmod.choose_split(em.manifest, ad, state.gflops)


async def default_split(model=None):
    """``{split, reason, edge_ms_per_token, ...}`` for ``model`` on this page's adapter."""
    name = await _model_name(op.check({"model": model}, op.MODEL_ONLY).get("model"), "causal_lm")
    return (await _choose_split(await get_model(name))).as_dict()


def _evict(keep):
    """Drop the least recently used tails until the resident ones fit RESIDENT_BUDGET."""
    while len(state.runners) > 1 and sum(r.backend.gpu_bytes for r in state.runners.values()) > RESIDENT_BUDGET:
        key = next(k for k in state.runners if k != keep)
        state.runners.pop(key).close()
        state.load_stats.pop(key, None)


async def get_runner(em, split, budget=(None, "")):
    """(runner, bytes streamed now): the tail of ``em`` at ``split``, loaded once and kept.
    Refused before any byte is fetched when it cannot fit (``budget``: :func:`memory_budget`);
    a load cancelled by :func:`stop` frees the GPU buffers it allocated."""
    from ..gpu import GpuBackend

    from .session import ServerSession, SplitRunner

    dtype = em.manifest.get("dtype", "f32")
    key = (em.name, dtype, split)
    r = state.runners.get(key)
    if r is not None:
        state.runners.move_to_end(key)
        return r, 0
    dev = await get_device()
    n = em.model.n_layers
    _check_fit(em, dev, split, budget)
    chunks_all = [t for c in em.manifest["chunks"] for t in c["tensors"]]
    shapes = {t["name"]: tuple(t["shape"]) for t in chunks_all}
    dtypes = {t["name"]: t["dtype"] for t in chunks_all}
    be = GpuBackend(dev, em.model, split, n, split == 0, True, dtype, shapes=shapes, dtypes=dtypes)
    try:
        chunks, owner = stream.select_chunks(em.manifest, needed=[nm for nm, _ in be.weight_layout()])
        what = ("the final norm and head" if split >= n else
                f"layers {split}..{n - 1}" + (" + embedding" if split == 0 else "") + " and the head")
        status(f"streaming {sum(c['bytes'] for c in chunks) / 1e6:.1f} MB of weights for {what} of {em.name}",
               phase="load", chunks=[[c["id"], c["bytes"]] for c in chunks])
        st = await stream.stream_chunks(em.manifest, chunks, stream.BackendSink(be), state.base_url, owner=owner,
                                        cancelled=lambda: state.stop_requested)
        server = (await ServerSession(em.name, split, state.base_url, await _server_weights(em)).open()
                  if split > 0 else None)
    except BaseException:
        be.destroy()
        raise
    _record_load(em, key, split, be, st)
    r = SplitRunner(em, split, be, server)
    r.weight_bytes = st.bytes
    state.runners[key] = r
    _evict(key)
    return r, st.bytes


def _check_fit(em, dev, split, budget):
    """Refuse a split that cannot fit this device before any byte is fetched (split.check_fit)."""
    m = em.model
    kv = 2 * m.n_kv_heads * m.head_dim * 4 * min(m.max_context, 2048) if m.causal else 0
    splitmod.check_fit(em.manifest, split, min(dev.limits["max_storage_binding"], dev.limits["max_buffer"]),
                       budget[0], kv, budget[1])


def _runner_key(em, split):
    return (em.name, em.manifest.get("dtype", "f32"), split)


def _progressive_load(em, split, budget):
    """(backend, loading task, head_ready): a backend for [split, N) + head whose parts are marked
    ready as their chunks land (fetched, verified, written): head first, then layers N-1 down to
    split, then the embedding. Parts without weights (an encoder's pooling head) are ready at once."""
    from ..gpu import GpuBackend

    dev = state.device
    n, m = em.model.n_layers, em.model
    _check_fit(em, dev, split, budget)
    chunks_all = [t for c in em.manifest["chunks"] for t in c["tensors"]]
    be = GpuBackend(dev, m, split, n, split == 0, True, em.manifest.get("dtype", "f32"),
                    shapes={t["name"]: tuple(t["shape"]) for t in chunks_all},
                    dtypes={t["name"]: t["dtype"] for t in chunks_all})
    be.track_ready()
    parts = {"head": set(m.tensors(m.ops(n, n, embed=False, head=True)))}
    loading, head_ready = _stream_parts(em, be, [nm for nm, _ in be.weight_layout()], split, n, parts)
    return be, loading, head_ready


def _stream_parts(em, be, needed, lo, hi, parts=None):
    """Stream the chunks holding tensors ``needed`` into ``be``, marking layers [lo, hi) (the
    embedding too at lo == 0) and ``parts`` ready as their tensors are all written; tensors of
    ``be`` not in ``needed`` are already there. (loading task, head_ready event)."""
    m, n = em.model, em.model.n_layers
    chunks, owner = stream.select_chunks(em.manifest, needed=needed)
    # the head first (the only wait), then layers from the top: each lets the split move one down
    chunks.sort(key=lambda c: (0, 0) if c["id"] == "head" else
                (1, -int(c["layer"])) if c.get("layer") is not None else (2, 0))
    parts = dict(parts or {})
    parts.update({i: set(m.tensors(m.ops(i, i + 1, embed=False, head=False))) for i in range(lo, hi)})
    if lo == 0:
        parts["embed"] = set(m.tensors(m.ops(0, 0, embed=True, head=False)))
    written, head_ready = set(be.tensors) - set(needed), asyncio.Event()

    def mark():
        for part in [p for p, names in parts.items() if names <= written]:
            be.mark_ready(part)
            parts.pop(part)
            if part == "head":
                head_ready.set()

    def on_chunk(cs):
        """A chunk is fetched, verified and written: mark every part now complete."""
        written.update(nm for nm, cid in owner.items() if cid == cs.id)
        mark()
        _emit("ready", {"model": em.name, "part": cs.id, "runnable_from": be.runnable_from()})

    mark()
    status(f"streaming {sum(c['bytes'] for c in chunks) / 1e6:.1f} MB of weights for layers {lo}..{hi - 1} "
           f"of {em.name} while the server runs them (progressive)", phase="load",
           chunks=[[c["id"], c["bytes"]] for c in chunks])
    loading = asyncio.ensure_future(stream.stream_chunks(em.manifest, chunks, stream.BackendSink(be),
                                                         state.base_url, owner=owner, on_chunk=on_chunk))
    return loading, head_ready


def _lowest_fit(em, split, budget):
    """The lowest split at or below ``split`` that fits this device (split.check_fit)."""
    k = split
    while k > 0:
        try:
            _check_fit(em, state.device, k - 1, budget)
        except EdgeError:
            break
        k -= 1
    return k


def _grower(em, be):
    """The 'auto' runner's way down past its first target: the backend grown to [new, N) and
    layers [new, old start) streamed like the first load (each marked ready as it lands)."""
    def grow(new):
        hi = be.start
        needed = be.extend_down(new)
        return _stream_parts(em, be, needed, new, hi)[0]
    return grow


async def _server_weights(em):
    """The weight file the server's layers run: the edge's format where the server lists it."""
    fmt = em.manifest.get("dtype", "f32")
    return fmt if fmt in (await _offered(em.name) or ()) else None


async def _start_progressive(em, split, auto, budget=(None, "")):
    """(ProgressiveRunner, loading task): :func:`_progressive_load` and a server session at split
    N; returns once the head is on the GPU (the only wait)."""
    from .session import ProgressiveRunner, ServerSession

    await get_device()
    n = em.model.n_layers
    be, loading, head_ready = _progressive_load(em, split, budget)
    try:
        server = await ServerSession(em.name, n, state.base_url, await _server_weights(em)).open()
        waiter = asyncio.ensure_future(head_ready.wait())
        await asyncio.wait([loading, waiter], return_when=asyncio.FIRST_COMPLETED)
        if not head_ready.is_set():
            waiter.cancel()
            server.close()
            await loading             # the load failed before the head: its error
    except BaseException:
        loading.cancel()
        be.destroy()
        raise
    r = ProgressiveRunner(em, split, be, server, auto=auto, grow=_grower(em, be) if auto else None,
                          lowest=_lowest_fit(em, split, budget) if auto else split)
    r.on_move = lambda tok, k: _emit("split", {"model": em.name, "token": tok, "split": k, "n_layers": n})
    return r, loading


async def _start_progressive_encoder(em, split, budget=(None, "")):
    """A ProgressiveEncoder kept as the runner of (model, format, split): it serves at once (the
    pooling head has no weights), the server running every layer the edge does not hold yet,
    while the layers keep loading after the call returns."""
    from .session import ProgressiveEncoder, ServerSession

    await get_device()
    n = em.model.n_layers
    be, loading, _ = _progressive_load(em, split, budget)
    try:
        server = await ServerSession(em.name, n, state.base_url, await _server_weights(em)).open()
    except BaseException:
        loading.cancel()
        be.destroy()
        raise
    r = ProgressiveEncoder(em, split, be, server, loading)
    r.on_move = lambda call, k: _emit("split", {"model": em.name, "call": call, "split": k, "n_layers": n})
    key = _runner_key(em, split)
    state.runners[key] = r

    def loaded(t):
        if not t.cancelled() and t.exception() is None:
            _record_load(em, key, split, be, t.result())
    loading.add_done_callback(loaded)
    _evict(key)
    return r


async def _finish_growing(runner):
    """The loads the 'auto' policy started below the first target, awaited: [{bytes, seconds}].
    One that failed leaves the target at the lowest split whose layers all landed."""
    out = []
    for t in runner.growing:
        try:
            st = await t
            out.append({"bytes": st.bytes, "seconds": round(st.seconds, 3)})
        except Exception as e:  # noqa: BLE001 - the generation already ran at the splits it had
            ready = runner.backend.runnable_from()
            runner.target = ready if ready is not None else runner.n
            out.append({"bytes": 0, "error": str(e)})
    return out


async def _keep_progressive(em, split, runner, st):
    """After a progressive generation: the loaded tail kept as a fixed-split runner."""
    key = _runner_key(em, split)
    fixed = await runner.settle()
    _record_load(em, key, split, fixed.backend, st)
    fixed.weight_bytes = st.bytes
    state.runners[key] = fixed
    _evict(key)
    return fixed


def _record_load(em, key, split, be, st):
    """A finished load of ``key``'s weights: kept for the stats, and the page told."""
    state.load_stats[key] = st.as_dict()
    _emit("loaded", {"model": em.name, "split": split, "gpu_bytes": int(be.gpu_bytes), **_brief_load(st)})


def _brief_load(st):
    return {"bytes": st.bytes, "seconds": round(st.seconds, 3), "mb_per_s": round(st.mb_per_s, 2),
            "wasm_heap_growth": st.wasm_heap_growth, "wasm_heap_after": st.wasm_heap_after,
            "peak_js_heap": st.peak_js_heap, "refetches": st.refetches, "resumes": st.resumes}


class _GpuJob:
    """``async with _GpuJob(wait)``: one GPU job at a time; ``wait=False`` refuses when busy."""

    def __init__(self, wait: bool, what: str):
        self.wait = wait
        self.what = what

    async def __aenter__(self):
        if not self.wait and state.lock.locked():
            raise EdgeError(f"busy: another call is using the GPU; {self.what} was not started "
                            "(pass wait: true to queue it)", "busy")
        await state.lock.acquire()

    async def __aexit__(self, *exc):
        state.lock.release()


def _params(o):
    greedy = o.get("greedy")
    temperature = o.get("temperature")
    if greedy is None:
        greedy = temperature is None or temperature == 0
    if greedy:
        return SamplingParams(greedy=True)
    if temperature == 0:
        raise EdgeError("option temperature must be above 0 when greedy is false", "bad_option", "temperature")
    return SamplingParams(greedy=False, temperature=float(temperature or 1.0), top_p=float(o.get("top_p", 1.0)),
                          top_k=int(o.get("top_k", 0)), seed=int(o.get("seed", 0)) & 0xFFFFFFFF)


def stop():
    """Ask the running generation to stop after the current token."""
    state.stop_requested = True


async def _use_gpu(backend):
    """The device, or None with the reason when the server must run everything."""
    if backend == "server":
        return None, "backend 'server' was asked for"
    dev = await get_device()
    if dev is None and backend == "webgpu":
        raise EdgeError(f"backend 'webgpu' was asked for, but {state.device_error}", "no_webgpu", "backend")
    return dev, state.device_error


# --------------------------------------------------------------------------- generate


def _check_prompt(prompt, chat):
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EdgeError("the prompt is empty", "bad_input")
        return prompt
    if chat and isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        return prompt
    raise EdgeError("the prompt must be a non-empty string" + (" or a list of {role, content} messages" if chat else ""),
                    "bad_input")


async def generate(prompt, **opts):
    auto = opts.get("split") in (None, "auto")
    if opts.get("split") == "auto":          # the chooser's target, re-evaluated while running
        opts = {k: v for k, v in opts.items() if k != "split"}
    o = op.check(opts, op.GENERATE)
    chat = o.get("chat", False)
    prompt = _check_prompt(prompt, chat)
    params = _params(o)
    em = await _model_for(o.get("model"), "causal_lm", o.get("format"))
    n = em.model.n_layers
    split = op.check_split(o["split"], n, em.name) if "split" in o else None
    prompt_ids = em.prompt_ids(prompt, chat)
    if len(prompt_ids) > em.model.max_context:
        raise EdgeError(f"the prompt is {len(prompt_ids)} tokens, longer than {em.name}'s context of "
                        f"{em.model.max_context}", "too_long")
    max_new = check_context(len(prompt_ids), o.get("max_new_tokens", 64), em.model.max_context)
    on_token = o.get("on_token")
    async with _GpuJob(o.get("wait", True), "generate"):
        state.stop_requested = False
        dev, reason = await _use_gpu(o.get("backend", "auto"))
        if dev is None:
            return await _server_generate(em, prompt_ids, max_new, params, on_token, reason)
        if split is None:
            split = (await _choose_split(em)).split
        progressive = o.get("progressive")
        server = await _has_server()
        if progressive is None:       # the default while the edge does not hold the weights
            progressive = server and _runner_key(em, split) not in state.runners
        elif progressive and not server:
            raise EdgeError("progressive offload needs a pyapp server (this is a static site or the "
                            "server is unreachable): pass progressive: false", "bad_option", "progressive")
        return await _gpu_generate(em, dev, split, prompt_ids, max_new, params, on_token,
                                   progressive and _runner_key(em, split) not in state.runners, auto,
                                   memory_budget(o), o.get("pipeline", True))


async def _gpu_generate(em, dev, split, prompt_ids, max_new, params, on_token, progressive=False, auto=False,
                        budget=(None, ""), pipeline=True):
    n = em.model.n_layers
    t_load = time.perf_counter()
    loading = None
    if progressive:
        runner, loading = await _start_progressive(em, split, auto, budget)
        streamed = 0
    else:
        runner, streamed = await get_runner(em, split, budget)
    load_s = time.perf_counter() - t_load
    await runner.reset(len(prompt_ids) + max_new)
    ds = em.tokenizer.decode_stream(skip_special_tokens=True)
    pieces = []

    def crossings():
        # (this module's: events + onToken, the WebSocket's, the GPU binding's)
        return (state.ffi, runner.server.crossings if runner.server else 0, int(dev.crossings))

    marks = [crossings(), None, None]

    def on_tok(t):
        piece = ds.step(t)
        pieces.append(piece)
        if on_token is not None:
            on_token(piece, t)
            state.ffi += 1
        _emit("token", {"text": piece, "id": t, "n": len(pieces),
                        "elapsed": round(time.perf_counter() - t_gen, 4)})
        # after the first token (prefill) and the second (the first decode step builds the
        # one-token plan): the steady-state decode is counted from there
        if len(pieces) <= 2:
            marks[len(pieces)] = crossings()

    status(f"generating: layers 0..{split - 1} on the server, {split}..{n - 1} + head on this GPU"
           if 0 < split < n else ("generating: every layer on this GPU" if split == 0 else
                                  "generating: every layer on the server, the head on this GPU"),
           phase="generate")
    _emit("start", {"kind": "generate", "backend": "webgpu", "model": em.name, "split": split,
                    "n_layers": n, "prompt_tokens": len(prompt_ids)})
    t_gen = time.perf_counter()
    try:
        stop = lambda: state.stop_requested  # noqa: E731
        if progressive:               # the server runs layers (the split moves): one step at a time
            res = await generate_async(lambda ids, k: runner.step(ids, k, params), prompt_ids, max_new,
                                       em.eos_ids, on_tok, stop)
        else:                         # pipelined at split 0 (every layer + the sampler here)
            res = await runner.generate(prompt_ids, max_new, params, em.eos_ids, on_tok, stop, pipeline)
    except BaseException:
        if progressive:               # a failed hand-over: nothing half-moved is kept
            loading.cancel()
            runner.close()
        raise
    end = crossings()
    trace = list(runner.trace) if progressive else [{"token": 0, "split": split}]
    if progressive:
        ttft_total = t_gen - t_load + res.time_to_first_token
        st = await loading
        load_s, streamed = st.seconds, st.bytes       # the stream's own time (it ran alongside)
        grown = await _finish_growing(runner)
        streamed += sum(g["bytes"] for g in grown)
        prog = {"handover_bytes": runner.handover_bytes, "handover_retries": runner.retries,
                "split_final": runner.split, "steps": [list(t) for t in runner.times],
                "handover_moves": list(runner.moves), "target_final": runner.target,
                "policy_moves": list(runner.decisions), "grown": grown, "server_load": runner.load}
        runner = await _keep_progressive(em, runner.target, runner, st)
    tail = ds.flush()
    if tail and not tail.endswith("\ufffd"):
        pieces.append(tail)
        if on_token is not None:
            on_token(tail, -1)
    text = em.tokenizer.decode(res.ids, skip_special_tokens=True)
    m1 = marks[1] or marks[0]
    m2 = marks[2] or m1
    first = [e - b for e, b in zip(m1, marks[0])]
    second = [e - b for e, b in zip(m2, m1)]
    if len(res.ids) > 2:
        per = [round((e - b) / (len(res.ids) - 2), 2) for e, b in zip(end, m2)]
    else:                            # no steady state yet: the one decode step, if any
        per = [float(x) for x in second]
    stats = {
        "kind": "generate", "backend": "webgpu", "model": em.name, "split": split, "n_layers": n,
        "prompt_tokens": len(prompt_ids), "tokens": len(res.ids), "finish_reason": res.finish_reason,
        # progressive: from the call (the head's wait included); waiting: from the loaded tail
        "time_to_first_token": round(ttft_total if progressive else res.time_to_first_token, 4),
        "time_to_first_token_with_load": round((ttft_total if progressive else load_s + res.time_to_first_token), 4),
        "tokens_per_second": round(res.tokens_per_second, 3),
        "progressive": progressive, "split_trace": trace,
        # steps run ahead of the token reads (every layer + the sampler on this GPU)
        "pipelined": bool(not progressive and pipeline and runner.pipelined()), **(prog if progressive else {}),
        # this call's load: 0 bytes and ~0 s when the tail was already on the GPU
        "load_seconds": round(load_s, 3), "weight_bytes": streamed, "format": em.manifest.get("dtype", "f32"),
        "wasm_heap": stream.wasm_heap_bytes(), "gpu_bytes": int(runner.backend.gpu_bytes),
        "adapter": state.adapter.as_dict(),
        # Python->JS calls per decode token (steady state, from the third token): the page
        # events + onToken, the WebSocket send + receive, the GPU binding's (writes, submit,
        # readback); the prefill and the first decode step (which builds the one-token plan
        # when this runner has not decoded before) separately
        "ffi_crossings_per_token": round(sum(per), 2),
        "ffi_per_token": {"events": per[0], "websocket": per[1], "gpu": per[2]},
        "ffi_first_token": {"events": first[0], "websocket": first[1], "gpu": first[2]},
        "ffi_second_token": {"events": second[0], "websocket": second[1], "gpu": second[2]},
        "js_heap": stream.js_heap_bytes(),
        "load": state.load_stats.get((em.name, em.manifest.get("dtype", "f32"), runner.split)) if streamed else None,
        "gpu": dict(runner.backend.stats),
    }
    state.last_stats = stats
    _emit("stats", {k: v for k, v in stats.items() if k not in ("load", "adapter", "steps")})
    status(f"{len(res.ids)} tokens · {res.finish_reason}", phase="done")
    return {"promptIds": list(prompt_ids), "ids": list(res.ids), "text": text, "stats": stats}


# --------------------------------------------------------------------------- server only


async def _server_generate(em, prompt_ids, max_new, params, on_token, reason):
    """No WebGPU: the server runs everything (``/v1/completions``, SSE), still token by token."""
    from .jsfiles import load
    status(f"generating on the server ({reason})", phase="fallback")
    body = {"model": em.name, "prompt": list(prompt_ids), "max_tokens": max_new, "stream": True,
            "temperature": 0 if params.greedy else params.temperature}
    if not params.greedy:
        body.update(top_p=params.top_p, top_k=params.top_k, seed=params.seed)
    _emit("start", {"kind": "generate", "backend": "server", "model": em.name, "split": em.model.n_layers,
                    "n_layers": em.model.n_layers, "prompt_tokens": len(prompt_ids)})
    t0 = time.perf_counter()
    it = await load("sse")(state.base_url + "/v1/completions", json.dumps(body), stream.NET["stall_s"] * 1000)
    pieces, ttft, ids, finish, n_events = [], None, None, "length", 0
    while True:
        if state.stop_requested:
            finish = "cancelled"
            it.cancel()
            break
        ev = await it.next()
        if ev is None or str(ev) == "[DONE]":
            break
        d = json.loads(str(ev))
        if "error" in d:
            raise EdgeError(f"the server failed: {d['error'].get('message', d['error'])}", "server")
        extra = d.get("pyapp") or {}
        if extra.get("ids") is not None:
            ids = list(extra["ids"])
        for c in d.get("choices", []):
            piece = c.get("text") or ""
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                n_events += 1
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece, -1)
                _emit("token", {"text": piece, "id": -1, "n": n_events,
                                "elapsed": round(time.perf_counter() - t0, 4)})
            if c.get("finish_reason"):
                finish = c["finish_reason"]
    total = time.perf_counter() - t0
    text = "".join(pieces)
    if ids is None:
        ids = em.tokenizer.encode(text, add_special_tokens=False).ids if text else []
    dec = total - (ttft or 0)
    stats = {"kind": "generate", "backend": "server", "reason": reason, "model": em.name,
             "split": em.model.n_layers, "n_layers": em.model.n_layers, "prompt_tokens": len(prompt_ids),
             "tokens": len(ids), "finish_reason": finish, "time_to_first_token": round(ttft or 0.0, 4),
             "tokens_per_second": round((len(ids) - 1) / dec, 3) if len(ids) > 1 and dec > 0 else 0.0,
             "weight_bytes": 0, "wasm_heap": stream.wasm_heap_bytes(), "gpu_bytes": 0}
    state.last_stats = stats
    _emit("stats", stats)
    status(f"{len(ids)} tokens · {finish} (on the server)", phase="done")
    return {"promptIds": list(prompt_ids), "ids": ids, "text": text, "stats": stats}


# --------------------------------------------------------------------------- embeddings


def _check_texts(texts):
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise EdgeError("embed() takes a string or a non-empty list of strings", "bad_input")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise EdgeError(f"text {i} is {'empty' if isinstance(t, str) else 'not a string'}: "
                            "embed() takes non-empty strings", "bad_input")
    return list(texts)


async def embed(texts, **opts):
    """Pooled, L2-normalised embeddings of ``texts``: each sequence at its own length, packed
    with the others into as few GPU steps as fit (no padding; attention and pooling per text)."""
    o = op.check(opts, op.EMBED)
    texts = _check_texts(texts)
    em = await _model_for(o.get("model"), "encoder", o.get("format"))
    n = em.model.n_layers
    split = op.check_split(o["split"], n, em.name) if "split" in o else n // 2
    seqs = [em.tokenizer.encode(t).ids for t in texts]
    for i, s in enumerate(seqs):
        if len(s) > em.model.max_context:
            raise EdgeError(f"text {i} is {len(s)} tokens, longer than {em.name}'s context of "
                            f"{em.model.max_context}", "too_long")
    async with _GpuJob(o.get("wait", True), "embed"):
        state.stop_requested = False        # a stop() before this call does not cancel its load
        t0 = time.perf_counter()
        dev, reason = await _use_gpu(o.get("backend", "auto"))
        prog = {}
        if dev is None:
            out = await _server_embed(em, seqs)
            streamed, backend, split = 0, "server", n
        else:
            key = _runner_key(em, split)
            if o.get("progressive") and key not in state.runners:
                if not await _has_server():
                    raise EdgeError("progressive embeddings need a pyapp server (this is a static site or "
                                    "the server is unreachable): leave progressive out", "bad_option",
                                    "progressive")
                await _start_progressive_encoder(em, split, memory_budget(o))
                runner, streamed = state.runners[key], 0
            else:
                runner, streamed = await get_runner(em, split, memory_budget(o))
            out = await runner.embed(seqs)
            backend = "webgpu"
            if getattr(runner, "progressive", False):
                # the split that served this call, and every call's (split_trace)
                prog = {"target": split, "progressive": True, "split_trace": list(runner.trace),
                        "loading": not runner.loading.done()}
                split = runner.served
        secs = time.perf_counter() - t0
    stats = {"kind": "embed", "backend": backend, "model": em.name, "split": split, "n_layers": n,
             "texts": len(texts), "tokens": sum(len(s) for s in seqs), "seconds": round(secs, 3),
             "embeddings_per_second": round(len(texts) / secs, 2) if secs > 0 else 0.0,
             "weight_bytes": streamed, "format": em.manifest.get("dtype", "f32")}
    if backend == "server":
        stats["reason"] = reason
    else:
        stats.update(prog)
    state.last_stats = stats
    _emit("stats", stats)
    status(f"{len(texts)} embeddings · {stats['embeddings_per_second']} a second", phase="done")
    return out


async def _server_embed(em, seqs):
    d = await stream.fetch_json(state.base_url + "/v1/embeddings", {
        "method": "POST", "headers": {"content-type": "application/json"},
        "body": json.dumps({"model": em.name, "input": seqs})})
    return [e["embedding"] for e in sorted(d["data"], key=lambda e: e["index"])]


async def tokenize(text, **opts):
    o = op.check(opts, op.TOKENIZE)
    chat = o.get("chat", False)
    em = await get_model(await _model_name(o.get("model"), "causal_lm"))
    return em.prompt_ids(_check_prompt(text, chat), chat)


async def adapter():
    """This page's WebGPU adapter: {available, reason, vendor, architecture, is_cpu, limits...}."""
    return (await adapter_info()).as_dict()


async def run_python(code):
    from pyodide.code import eval_code_async  # type: ignore[import-not-found]
    import __main__
    return await eval_code_async(code, __main__.__dict__)


def stats():
    return {"last": state.last_stats, "adapter": state.adapter.as_dict() if state.adapter else None,
            "device_error": state.device_error, "gflops": state.gflops,
            "wasm_heap": stream.wasm_heap_bytes(), "js_heap": stream.js_heap_bytes(),
            "resident": [{"model": k[0], "dtype": k[1], "split": k[2], "gpu_bytes": int(r.backend.gpu_bytes)}
                         for k, r in state.runners.items()],
            "loads": {f"{k[0]}@{k[2]}": v for k, v in state.load_stats.items()}}


# --------------------------------------------------------------------------- JS entries


def _to_js(v):
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    return to_js(v, dict_converter=js.Object.fromEntries)


def _py(v):
    """A JS argument as Python data (options keep their JS functions, e.g. onToken)."""
    return v.to_py(depth=1) if hasattr(v, "to_py") else v


def _js_opts(o):
    o = _py(o)
    if o is None or type(o).__name__ == "JsNull":
        return {}
    if not isinstance(o, dict):
        raise EdgeError("options must be an object, e.g. {model: 'smollm2-135m'}", "bad_option")
    return {k: (None if type(v).__name__ == "JsNull" else v) for k, v in o.items()}


def _args(name):
    """How each JS entry maps its JS arguments to the Python call."""
    return {
        "generate": lambda p, o=None: generate(_py_deep(p), **_js_opts(o)),
        "embed": lambda t, o=None: embed(_py_deep(t), **_js_opts(o)),
        "tokenize": lambda t, o=None: tokenize(_py_deep(t), **_js_opts(o)),
        "default_split": lambda m=None: default_split(_py(m)),
        "adapter": lambda: adapter(),
        "models": lambda: list_models(),
        "formats": lambda m=None: list_formats(_py(m)),
    }[name]


def _py_deep(v):
    return v.to_py() if hasattr(v, "to_py") else v


def _js_entry(name):
    """The JS-facing entry for ``name``: api.js turns {value} / {error} into a value or an Error."""
    from pyodide.ffi import create_proxy  # type: ignore[import-not-found]

    from .jsfiles import load
    call = _args(name)

    async def run(*args):
        try:
            return _to_js({"value": await call(*args)})
        except Exception as e:  # noqa: BLE001 - every failure becomes one sentence for JS
            d = describe(e)
            if d["code"] == "internal":
                status(d["message"], phase="error")
            return _to_js({"error": d})
    return load("api")(create_proxy(run))


JS_ENTRIES = ("generate", "embed", "tokenize", "default_split", "adapter", "models", "formats")


def stats_js():
    return _to_js(stats())


def install(base_url=""):
    """Called once by the page's boot with the site's origin: makes the ``<name>_js`` entries
    (``import pyapp`` reaches the Python API through ``pyapp.__getattr__``)."""
    state.base_url = base_url.rstrip("/")
    for name in JS_ENTRIES:
        globals()[f"{name}_js"] = _js_entry(name)
    return True
