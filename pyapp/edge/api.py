"""The edge's API: what ``window.pyapp`` (the console, the page) and ``import pyapp`` (Python in the
page) call.

    await generate(prompt, model=..., split=..., max_new_tokens=32, greedy=True, chat=False,
                   temperature=1.0, top_p=1.0, top_k=0, seed=0, on_token=None)
        -> {"promptIds", "ids", "text", "stats"}
    await embed(texts, model=..., split=...)  -> [[float, ...], ...]
    await tokenize(text, model=...)           -> [int, ...]
    await run_python(code)                    -> the value of the last expression

Without WebGPU (or with ``backend="server"``) generation and embeddings go to the server's
OpenAI-style API, still streamed token by token; ``stats["backend"]`` and ``stats["reason"]``
say so.  The JS-facing wrappers (``*_js``) take and return plain JS objects.
"""
from __future__ import annotations

import json
import time

from ..decode import check_context
from ..sampling import SamplingParams
from . import split as splitmod
from . import stream

DEFAULT_MODEL = "smollm2-135m"


class _State:
    def __init__(self):
        self.base_url = ""
        self.adapter = None          # split.AdapterInfo
        self.device = None
        self.device_error = None
        self.gflops = None
        self.models = {}             # name -> EdgeModel
        self.runners = {}            # (name, split) -> session.SplitRunner
        self.stop_requested = False
        self.last_stats = {}
        self.load_stats = {}         # (name, split) -> stream.LoadStats dict
        self.ffi = 0


state = _State()


_emit_js = None


def _emit(kind, detail):
    """A ``pyapp:<kind>`` DOM event for the page (status lines, stats): one FFI crossing."""
    global _emit_js
    try:
        if _emit_js is None:
            from pyodide.code import run_js  # type: ignore[import-not-found]
            _emit_js = run_js("((k, s) => { globalThis.dispatchEvent("
                              "new CustomEvent('pyapp:' + k, { detail: JSON.parse(s) })); })")
        _emit_js(kind, json.dumps(detail))
        state.ffi += 1
    except Exception:  # noqa: BLE001 - CPython, or a worker without events
        pass


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
        self.eos_ids = sorted(set(manifest.get("eos_ids") or model.eos_ids) | _gen_eos(manifest))

    @classmethod
    async def load(cls, name, base_url=""):
        import js  # type: ignore[import-not-found]

        from ..arch import build_model
        from ..tokenizer import Tokenizer, load_js_modules

        manifest = await stream.load_manifest(name, base_url)
        names = {t["name"] for c in manifest["chunks"] for t in c["tensors"]}
        model = build_model(manifest["config"], names)
        await load_js_modules()
        tk = manifest.get("tokenizer") or {}
        resp = await js.fetch(stream.absolute_url(base_url, tk["tokenizer.json"]))
        if not resp.ok:
            raise OSError(f"tokenizer.json for {name}: HTTP {resp.status}")
        tok_json = await resp.json()
        config = None
        if tk.get("tokenizer_config.json"):
            config = await stream.fetch_json(stream.absolute_url(base_url, tk["tokenizer_config.json"]))
        tok = Tokenizer.from_json(tok_json, config)
        return cls(name, manifest, model, tok)

    def prompt_ids(self, prompt, chat=False):
        if chat:
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(prompt).ids


def _gen_eos(manifest):
    gc = (manifest.get("generation_config") or {}).get("eos_token_id")
    return set(gc if isinstance(gc, list) else ([] if gc is None else [gc]))


async def get_model(name):
    em = state.models.get(name)
    if em is None:
        status(f"reading the manifest of {name}")
        em = await EdgeModel.load(name, state.base_url)
        state.models[name] = em
    return em


# --------------------------------------------------------------------------- the GPU


async def adapter_info():
    if state.adapter is None:
        try:
            state.adapter = await splitmod.probe_adapter()
        except Exception as e:  # noqa: BLE001
            state.adapter = splitmod.AdapterInfo(False, f"probing WebGPU failed: {e}")
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
        state.device = await browser.request_device()
    except Exception as e:  # noqa: BLE001
        state.device_error = f"could not open a WebGPU device: {e}"
        return None
    return state.device


async def default_split(name):
    """The split the page starts with: from the adapter (CPU fallback, limits) and a quick
    GEMV timing on the device (measured once per page, ~50 ms)."""
    em = await get_model(name)
    ad = await adapter_info()
    dev = await get_device()
    if dev is not None and state.gflops is None:
        try:
            state.gflops = await splitmod.measure_gflops(getattr(dev, "device", dev))
        except Exception as e:  # noqa: BLE001
            status(f"kernel timing failed: {e}")
            state.gflops = None
    if dev is None:
        ad = splitmod.AdapterInfo(False, state.device_error or ad.reason)
    return splitmod.choose_split(em.manifest, ad, state.gflops)


async def get_runner(name, split, on_chunk=None):
    from ..gpu import GpuBackend

    from .session import ServerSession, SplitRunner

    key = (name, split)
    r = state.runners.get(key)
    if r is not None:
        return r
    em = await get_model(name)
    dev = await get_device()
    if dev is None:
        raise RuntimeError(state.device_error or "no WebGPU")
    n = em.model.n_layers
    # one tail resident at a time: drop other splits of any model (GPU memory)
    for k in list(state.runners):
        old = state.runners.pop(k)
        old.close()
        if hasattr(old.backend, "destroy"):
            old.backend.destroy()
    dtype = em.manifest.get("dtype", "f32")
    shapes = {t["name"]: tuple(t["shape"]) for c in em.manifest["chunks"] for t in c["tensors"]}
    dtypes = {t["name"]: t["dtype"] for c in em.manifest["chunks"] for t in c["tensors"]}
    try:
        be = GpuBackend(dev, em.model, split, n, split == 0, True, dtype, shapes=shapes, dtypes=dtypes)
    except TypeError:   # an older constructor
        be = GpuBackend(dev, em.model, split, n, split == 0, True, dtype)
    needed = [nm for nm, _ in be.weight_layout()]
    chunks, owner = stream.select_chunks(em.manifest, needed=needed)
    what = ("the final norm and head" if split >= n else
            f"layers {split}..{n - 1}" + (" + embedding" if split == 0 else "") + " and the head")
    status(f"streaming {sum(c['bytes'] for c in chunks) / 1e6:.1f} MB of weights for {what} of {name}",
           phase="load", chunks=[[c["id"], c["bytes"]] for c in chunks])
    st = await stream.stream_chunks(em.manifest, chunks, stream.BackendSink(be), state.base_url,
                                    owner=owner, on_chunk=on_chunk)
    state.load_stats[key] = st.as_dict()
    _emit("loaded", {"model": name, "split": split, "gpu_bytes": int(be.gpu_bytes), **_brief_load(st)})
    server = None
    if split > 0:
        server = await ServerSession(name, split, state.base_url).open()
    r = SplitRunner(em, split, be, server)
    r.weight_bytes = st.bytes
    state.runners[key] = r
    return r


def _brief_load(st):
    return {"bytes": st.bytes, "seconds": round(st.seconds, 3), "mb_per_s": round(st.mb_per_s, 2),
            "wasm_heap_growth": st.wasm_heap_growth, "wasm_heap_after": st.wasm_heap_after,
            "peak_js_heap": st.peak_js_heap, "refetches": st.refetches, "resumes": st.resumes}


# --------------------------------------------------------------------------- options


def _opt(opts, *names, default=None):
    for n in names:
        if n in opts and opts[n] is not None:
            return opts[n]
    return default


def _params(opts):
    greedy = _opt(opts, "greedy")
    temperature = _opt(opts, "temperature")
    if greedy is None:
        greedy = temperature is None or float(temperature) == 0
    if greedy:
        return SamplingParams(greedy=True)
    return SamplingParams(greedy=False, temperature=float(temperature or 1.0),
                          top_p=float(_opt(opts, "top_p", "topP", default=1.0)),
                          top_k=int(_opt(opts, "top_k", "topK", default=0)),
                          seed=int(_opt(opts, "seed", default=0)) & 0xFFFFFFFF)


def stop():
    """Ask the running generation to stop after the current token."""
    state.stop_requested = True


# --------------------------------------------------------------------------- generate


async def generate(prompt, **opts):
    model = _opt(opts, "model", default=DEFAULT_MODEL)
    max_new = int(_opt(opts, "max_new_tokens", "maxNewTokens", default=64))
    chat = bool(_opt(opts, "chat", default=False))
    on_token = _opt(opts, "on_token", "onToken")
    backend = _opt(opts, "backend", default="auto")
    params = _params(opts)
    em = await get_model(model)
    if not em.model.causal:
        raise ValueError(f"{model} is an encoder ({em.model.arch}); use embed()")
    prompt_ids = em.prompt_ids(prompt, chat)
    max_new = check_context(len(prompt_ids), max_new, em.model.max_context)
    state.stop_requested = False
    dev = None if backend == "server" else await get_device()
    if dev is None:
        reason = "backend='server' was asked for" if backend == "server" else state.device_error
        return await _server_generate(em, prompt, prompt_ids, max_new, params, chat, on_token, reason)

    split = _opt(opts, "split")
    if split is None:
        split = (await default_split(model)).split
    split = int(split)
    n = em.model.n_layers
    if not 0 <= split <= n:
        raise ValueError(f"split must be in 0..{n}")
    t_load = time.perf_counter()
    runner = await get_runner(model, split)
    load_s = time.perf_counter() - t_load
    await runner.reset(len(prompt_ids) + max_new)
    ds = em.tokenizer.decode_stream(skip_special_tokens=True)
    pieces = []

    def crossings():
        # (this module's: events + onToken, the WebSocket's, the GPU binding's)
        return (state.ffi, runner.server.crossings if runner.server else 0,
                int(getattr(dev, "crossings", 0)))

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

    from ..decode import generate_async
    status(f"generating: layers 0..{split - 1} on the server, {split}..{n - 1} + head on this GPU"
           if 0 < split < n else ("generating: every layer on this GPU" if split == 0 else
                                  "generating: every layer on the server, the head on this GPU"),
           phase="generate")
    _emit("start", {"backend": "webgpu", "model": model, "split": split, "n_layers": n,
                    "prompt_tokens": len(prompt_ids)})
    t_gen = time.perf_counter()
    res = await generate_async(lambda ids, k: runner.step(ids, k, params), prompt_ids, max_new,
                               em.eos_ids, on_tok, lambda: state.stop_requested)
    end = crossings()
    tail = ds.flush() if hasattr(ds, "flush") else ""
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
        "backend": "webgpu", "model": model, "split": split, "n_layers": n,
        "prompt_tokens": len(prompt_ids), "tokens": len(res.ids), "finish_reason": res.finish_reason,
        "time_to_first_token": round(res.time_to_first_token, 4),
        "tokens_per_second": round(res.tokens_per_second, 3),
        "load_seconds": round(load_s, 3), "weight_bytes": getattr(runner, "weight_bytes", 0),
        "wasm_heap": stream.wasm_heap_bytes(), "gpu_bytes": _gpu_bytes(runner),
        "adapter": (state.adapter.as_dict() if state.adapter else None),
        # Python->JS calls per decode token (steady state, from the third token): the page
        # events + onToken, the WebSocket send + receive, the GPU binding's (writes, submit,
        # readback); the prefill and the first decode step (which builds the one-token plan
        # when this runner has not decoded before) separately
        "ffi_crossings_per_token": round(sum(per), 2),
        "ffi_per_token": {"events": per[0], "websocket": per[1], "gpu": per[2]},
        "ffi_first_token": {"events": first[0], "websocket": first[1], "gpu": first[2]},
        "ffi_second_token": {"events": second[0], "websocket": second[1], "gpu": second[2]},
        "js_heap": stream.js_heap_bytes(),
        "load": state.load_stats.get((model, split)),
    }
    bs = getattr(runner.backend, "stats", None)
    if isinstance(bs, dict):
        stats["gpu"] = dict(bs)
    state.last_stats = stats
    _emit("stats", {k: v for k, v in stats.items() if k not in ("load", "adapter")})
    return {"promptIds": list(prompt_ids), "ids": list(res.ids), "text": text, "stats": stats}


def _gpu_bytes(runner):
    b = getattr(runner.backend, "gpu_bytes", None)
    if b is not None:
        return int(b() if callable(b) else b)
    n = getattr(runner, "weight_bytes", 0)
    c = runner.cache
    return n + int(getattr(c, "nbytes", 0) or 0)


# --------------------------------------------------------------------------- server only

JS_SSE = r"""
(async (url, body) => {
  const resp = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  if (!resp.ok) throw new Error(`POST ${url}: HTTP ${resp.status}: ${(await resp.text()).slice(0, 300)}`);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  const pending = [];
  return {
    async next() {
      while (true) {
        if (pending.length) return pending.shift();
        const i = buf.indexOf('\n\n');
        if (i >= 0) {
          const ev = buf.slice(0, i); buf = buf.slice(i + 2);
          const data = ev.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trim()).join('\n');
          if (data) pending.push(data);
          continue;
        }
        const { done, value } = await reader.read();
        if (done) return null;
        buf += value;
      }
    },
    cancel() { reader.cancel().catch(() => {}); },
  };
})
"""

_sse = None


async def _server_generate(em, prompt, prompt_ids, max_new, params, chat, on_token, reason):
    """No WebGPU: the server runs everything (``/v1/completions``, SSE), still token by token."""
    global _sse
    if _sse is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        _sse = run_js(JS_SSE)
    status(f"No WebGPU on this device ({reason}): generating on the server", phase="fallback")
    body = {"model": em.name, "prompt": list(prompt_ids), "max_tokens": max_new, "stream": True,
            "temperature": 0 if params.greedy else params.temperature}
    if not params.greedy:
        body.update(top_p=params.top_p, top_k=params.top_k, seed=params.seed)
    _emit("start", {"backend": "server", "model": em.name, "split": em.model.n_layers,
                    "n_layers": em.model.n_layers, "prompt_tokens": len(prompt_ids)})
    t0 = time.perf_counter()
    it = await _sse(state.base_url + "/v1/completions", json.dumps(body))
    pieces, ttft, ids, finish, n_events = [], None, None, "length", 0
    try:
        while True:
            if state.stop_requested:
                finish = "cancelled"
                it.cancel()
                break
            ev = await it.next()
            if ev is None:
                break
            ev = str(ev)
            if ev == "[DONE]":
                break
            d = json.loads(ev)
            if "error" in d:
                raise RuntimeError(f"server: {d['error'].get('message', d['error'])}")
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
    finally:
        it = None
    total = time.perf_counter() - t0
    text = "".join(pieces)
    if ids is None:
        ids = em.tokenizer.encode(text, add_special_tokens=False).ids if text else []
    dec = total - (ttft or 0)
    stats = {"backend": "server", "reason": reason, "model": em.name, "split": em.model.n_layers,
             "n_layers": em.model.n_layers, "prompt_tokens": len(prompt_ids), "tokens": len(ids),
             "finish_reason": finish, "time_to_first_token": round(ttft or 0.0, 4),
             "tokens_per_second": round((len(ids) - 1) / dec, 3) if len(ids) > 1 and dec > 0 else 0.0,
             "weight_bytes": 0, "wasm_heap": stream.wasm_heap_bytes(), "gpu_bytes": 0}
    state.last_stats = stats
    _emit("stats", stats)
    return {"promptIds": list(prompt_ids), "ids": ids, "text": text, "stats": stats}


# --------------------------------------------------------------------------- embeddings


async def embed(texts, **opts):
    model = _opt(opts, "model", default="minilm-l6")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    em = await get_model(model)
    backend = _opt(opts, "backend", default="auto")
    dev = None if backend == "server" else await get_device()
    if dev is None:
        return await _server_embed(em, texts)
    split = _opt(opts, "split")
    split = em.model.n_layers // 2 if split is None else int(split)
    runner = await get_runner(model, split)
    out = []
    for t in texts:
        ids = em.tokenizer.encode(t).ids
        if len(ids) > em.model.max_context:
            raise ValueError(f"text of {len(ids)} tokens is longer than the context of {em.model.max_context}")
        out.append(await runner.embed(ids))
    return out


async def _server_embed(em, texts):
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    init = to_js({"method": "POST", "headers": {"content-type": "application/json"},
                  "body": json.dumps({"model": em.name, "input": texts})},
                 dict_converter=js.Object.fromEntries)
    resp = await js.fetch(state.base_url + "/v1/embeddings", init)
    txt = str(await resp.text())
    if not resp.ok:
        raise RuntimeError(f"/v1/embeddings: HTTP {resp.status}: {txt[:300]}")
    d = json.loads(txt)
    return [e["embedding"] for e in sorted(d["data"], key=lambda e: e["index"])]


async def tokenize(text, **opts):
    em = await get_model(_opt(opts, "model", default=DEFAULT_MODEL))
    return em.prompt_ids(text, bool(_opt(opts, "chat", default=False)))


async def run_python(code):
    from pyodide.code import eval_code_async  # type: ignore[import-not-found]
    import __main__
    return await eval_code_async(code, __main__.__dict__)


def stats():
    return {"last": state.last_stats, "adapter": state.adapter.as_dict() if state.adapter else None,
            "device_error": state.device_error, "gflops": state.gflops,
            "wasm_heap": stream.wasm_heap_bytes(), "js_heap": stream.js_heap_bytes(),
            "loads": {f"{k[0]}@{k[1]}": v for k, v in state.load_stats.items()}}


# --------------------------------------------------------------------------- JS wrappers


def _to_js(v):
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    return to_js(v, dict_converter=js.Object.fromEntries)


def _opts_from_js(o):
    if o is None:
        return {}
    if hasattr(o, "to_py"):
        d = o.to_py(depth=1)       # keeps onToken as a JS function
        return dict(d)
    return dict(o)


async def generate_js(prompt, opts=None):
    p = prompt.to_py() if hasattr(prompt, "to_py") else prompt
    return _to_js(await generate(p, **_opts_from_js(opts)))


async def embed_js(texts, opts=None):
    t = texts.to_py() if hasattr(texts, "to_py") else texts
    return _to_js(await embed(t, **_opts_from_js(opts)))


async def tokenize_js(text, opts=None):
    return _to_js(await tokenize(text, **_opts_from_js(opts)))


async def default_split_js(model):
    return _to_js((await default_split(model)).as_dict())


async def adapter_js():
    return _to_js((await adapter_info()).as_dict())


def stats_js():
    return _to_js(stats())


async def models_js():
    return _to_js(await stream.fetch_json(state.base_url + "/v1/models"))


def install(base_url=""):
    """Called once by the page's boot with the site's origin (``import pyapp`` reaches this
    API through ``pyapp.__getattr__``)."""
    state.base_url = base_url.rstrip("/")
    return True
