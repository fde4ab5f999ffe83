"""Server-only mode: /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models,
shaped like the OpenAI API (non-streaming and SSE streaming)."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pyapp.decode import check_context, generate
from pyapp.sampling import SamplingParams, sample_numpy

from .httputil import client_id, compute_route, read_json
from .runtime import ApiError, ModelEntry

# Every parameter of the OpenAI schema is either implemented, accepted only at its no-op value
# (anything else is a 400 naming it), or refused; a field outside the schema is a 400 too.
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                     "stream", "stream_options", "echo", "n", "logprobs", "user", "best_of",
                     "frequency_penalty", "presence_penalty", "logit_bias", "suffix"}
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "top_k", "seed", "stop", "stream", "stream_options", "n", "logprobs", "top_logprobs",
               "user", "frequency_penalty", "presence_penalty", "logit_bias", "tools", "tool_choice",
               "parallel_tool_calls", "response_format", "store", "metadata", "modalities",
               "functions", "function_call", "audio", "prediction", "reasoning_effort",
               "service_tier", "web_search_options"}
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
# parameter -> the values that mean "not used" (anything else: 400, not silently ignored)
NO_OP = {"best_of": (None, 1), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
         "logit_bias": (None, {}), "suffix": (None, ""), "store": (None, False),
         "metadata": (None, {}), "parallel_tool_calls": (None, True, False),
         "functions": (None, []), "function_call": (None, "none"), "audio": (None,),
         "prediction": (None,), "reasoning_effort": (None,), "service_tier": (None, "auto", "default"),
         "web_search_options": (None,), "tool_choice": (None, "none", "auto"),
         "modalities": (None, ["text"]), "response_format": (None, {"type": "text"})}


# --------------------------------------------------------------------------- parameters


def _same(a, b) -> bool:
    """JSON equality: 0 == 0.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b and (isinstance(a, (int, float)) == isinstance(b, (int, float)))


def check_fields(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown parameter(s): {', '.join(unknown)[:200]}", param=unknown[0])
    for k, ok in NO_OP.items():
        if k in body and k in allowed and not any(_same(body[k], v) for v in ok):
            raise ApiError(400, f"{k}={json.dumps(body[k])[:60]} is not supported by this server",
                           param=k)
    u = body.get("user")
    if u is not None and not isinstance(u, str):
        raise ApiError(400, "user must be a string", param="user")


def _flag(body, key) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return v


def _num(body, key, default, lo=None, hi=None, integer=False):
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ApiError(400, f"{key} must be a {'integer' if integer else 'number'}", param=key)
    if v != v or v in (float("inf"), float("-inf")):
        raise ApiError(400, f"{key} must be a finite number", param=key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"{key} must be in [{lo}, {'any' if hi is None else hi}]", param=key)
    return v


def sampling_from(body) -> SamplingParams:
    temperature = _num(body, "temperature", 1.0, 0, 2)
    top_p = _num(body, "top_p", 1.0, 0, 1)
    top_k = _num(body, "top_k", 0, 0, None, integer=True)
    seed = _num(body, "seed", 0, None, None, integer=True)
    if temperature == 0 or top_k == 1:
        return SamplingParams(greedy=True)
    if top_p == 0:
        raise ApiError(400, "top_p must be > 0", param="top_p")
    return SamplingParams(greedy=False, temperature=float(temperature), top_k=int(top_k),
                          top_p=float(top_p), seed=int(seed) & 0xFFFFFFFF)


def stops_from(body) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        s = [s]
    if not isinstance(s, list) or len(s) > 4 or not all(isinstance(x, str) and x for x in s):
        raise ApiError(400, "stop must be a non-empty string or a list of up to 4 of them", param="stop")
    return s


def _check_n(body):
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1 or not isinstance(n, int)):
        raise ApiError(400, "only n=1 is supported", param="n")


def _ids_ok(entry: ModelEntry, ids, what="prompt"):
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ApiError(400, f"{what} token ids must be a list of integers", param=what)
    if len(ids) > entry.context:
        raise ApiError(400, f"context overflow: {what} of {len(ids)} tokens > the context of "
                            f"{entry.context}", param=what)
    v = entry.model.vocab
    for i in ids:
        if not 0 <= i < v:
            raise ApiError(400, f"token id {i} is outside 0..{v - 1}", param=what)
    return ids


# --------------------------------------------------------------------------- generation core


class Decoder:
    """Incremental text: decode the ids so far, hold back partial UTF-8 and stop-string prefixes."""

    def __init__(self, tok, stops):
        self.tok = tok
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False

    def push(self, tid) -> str:
        self.ids.append(tid)
        self.text = self.tok.decode(self.ids)
        for s in self.stops:
            k = self.text.find(s)
            if k >= 0:
                self.text = self.text[:k]
                self.stopped = True
        if self.stopped:
            return self.flush()
        safe = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):
            safe = min(safe, len(self.text) - 1)
        if safe > self.sent:
            d, self.sent = self.text[self.sent:safe], safe
            return d
        return ""

    def flush(self) -> str:
        text = self.text.rstrip("\ufffd") if not self.stopped else self.text
        d = text[self.sent:] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return d


def plan(entry: ModelEntry, prompt_ids, body, key="max_tokens", default=16):
    lim = entry.limits
    if not entry.model.causal:
        raise ApiError(400, f"model {entry.name!r} is an encoder: use /v1/embeddings")
    mt = body.get(key)
    if mt is None and key == "max_completion_tokens":
        mt = body.get("max_tokens")
    if mt is None:
        mt = default if default is not None else lim.max_new_tokens
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise ApiError(400, f"{key} must be a positive integer", param=key)
    if mt > lim.max_new_tokens:
        raise ApiError(400, f"{key}={mt} is over the server's limit of {lim.max_new_tokens}", param=key)
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty")
    if len(prompt_ids) >= entry.context:
        raise ApiError(400, f"context overflow: prompt of {len(prompt_ids)} tokens leaves no room "
                            f"in the context of {entry.context}")
    return check_context(len(prompt_ids), mt, entry.context)


def logprobs_from(body, chat: bool) -> int | None:
    """How many top alternatives to report per token, or None for no logprobs."""
    if chat:
        if not _flag(body, "logprobs"):
            if body.get("top_logprobs") not in (None, 0):
                raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            return None
        return _num(body, "top_logprobs", 0, 0, 20, integer=True)
    if body.get("logprobs") is None:
        return None
    return _num(body, "logprobs", 0, 0, 5, integer=True)


def _token_logprobs(row: np.ndarray, tid: int, k: int):
    """(logprob of tid, [(id, logprob)] of the k most likely) under the model's distribution
    (the raw logits' log-softmax, before temperature/top-p), as OpenAI reports them."""
    x = np.asarray(row, dtype=np.float64)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    top = []
    if k:
        idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.lexsort((idx, -lp[idx]))]
        top = [(int(i), float(lp[i])) for i in idx]
    return float(lp[tid]), top


def run_generate(entry: ModelEntry, prompt_ids, max_new, params, on_token=None, should_stop=None,
                 top_k: int | None = None, record: list | None = None):
    """Blocking: the decode loop over the whole model with a private KV cache.
    With ``record``, each step appends (token, logprob, [(id, logprob)] * top_k).
    On ``--backend wgpu`` without logprobs every layer and the sampler run on the GPU, so the
    loop runs pipelined (GpuBackend.decode: step n+1 submitted before token n is read; the GPU
    sampler picks what sample_numpy picks, bit for bit)."""
    be = entry.backend()
    cache = be.new_cache(capacity=len(prompt_ids) + max_new)
    if record is None and hasattr(be, "pipeline"):
        return be.decode(prompt_ids, cache, params, max_new, entry.eos_ids, on_token=on_token,
                         should_stop=should_stop)

    def step(ids, n):
        logits = be.forward(ids=ids, cache=cache)
        tid = sample_numpy(logits[-1], params, n)
        if record is not None:
            record.append((int(tid), *_token_logprobs(logits[-1], int(tid), top_k or 0)))
        return tid

    return generate(step, prompt_ids, max_new, entry.eos_ids, on_token, should_stop)


def _now():
    return int(time.time())


def _logprobs_json(tok, record, n_tokens: int, chat: bool, offset0: int = 0):
    """OpenAI's logprobs object for the first ``n_tokens`` recorded steps."""
    rows = record[:n_tokens]

    def piece(i):
        return tok.decode([i])

    if chat:
        def item(i, lp):
            t = piece(i)
            return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
        return {"content": [{**item(t, lp), "top_logprobs": [item(i, x) for i, x in top]}
                            for t, lp, top in rows], "refusal": None}
    offsets, pos = [], offset0
    for t, _, _ in rows:
        offsets.append(pos)
        pos += len(piece(t))
    return {"tokens": [piece(t) for t, _, _ in rows],
            "token_logprobs": [lp for _, lp, _ in rows],
            "top_logprobs": [{piece(i): x for i, x in top} for _, _, top in rows],
            "text_offset": offsets}


async def _until_done_or_disconnect(request: Request, work):
    """Run ``work`` (a coroutine) unless the client goes away first: then return None (the
    caller's cancel flag stops the worker thread at its next token)."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # consumed if abandoned

    async def gone():
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return
    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    return None


async def _complete(request: Request, entry: ModelEntry, prompt_ids, body, *, chat: bool):
    st = request.app.state.pyapp
    params = sampling_from(body)
    stops = stops_from(body)
    _check_n(body)
    max_new = plan(entry, prompt_ids, body, "max_completion_tokens" if chat else "max_tokens",
                   None if chat else 16)
    stream = _flag(body, "stream")
    echo = _flag(body, "echo") and not chat
    top_k = logprobs_from(body, chat)
    if stream and top_k is not None:
        raise ApiError(400, "logprobs are only reported without stream: true", param="logprobs")
    so = body.get("stream_options")
    if so is not None and (not isinstance(so, dict) or set(so) - {"include_usage"}
                           or not isinstance(so.get("include_usage", False), bool)):
        raise ApiError(400, "stream_options must be {\"include_usage\": true|false}",
                       param="stream_options")
    if so and so.get("include_usage") and not stream:
        raise ApiError(400, "stream_options.include_usage needs stream: true", param="stream_options")
    include_usage = bool((so or {}).get("include_usage", False))
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = _now()
    tok = entry.tokenizer
    base = {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": entry.name, "system_fingerprint": "pyapp"}
    cancel = threading.Event()
    release = st.inflight.acquire(client_id(request))

    def finish(res, dec):
        if dec.stopped:
            return "stop"
        return "stop" if res.finish_reason == "stop" else "length"

    if not stream:
        dec = Decoder(tok, stops)
        record = [] if top_k is not None else None
        try:
            res = await _until_done_or_disconnect(request, anyio.to_thread.run_sync(
                lambda: run_generate(entry, prompt_ids, max_new, params, dec.push,
                                     lambda: dec.stopped or cancel.is_set(), top_k, record),
                limiter=st.sessions.limiter))
        finally:
            cancel.set()
            release()
        if res is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        text = dec.text if dec.stopped else dec.text.rstrip("\ufffd")
        prefix = tok.decode(prompt_ids) if echo else ""
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(res.ids),
                 "total_tokens": len(prompt_ids) + len(res.ids)}
        lp = _logprobs_json(tok, record, len(res.ids), chat, len(prefix)) if record is not None else None
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                              "annotations": []},
                      "logprobs": lp, "finish_reason": finish(res, dec)}
        else:
            choice = {"index": 0, "text": prefix + text, "logprobs": lp,
                      "finish_reason": finish(res, dec)}
        return JSONResponse({**base, "choices": [choice], "usage": usage,
                             "pyapp": {"ids": res.ids}})

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    dec = Decoder(tok, stops)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def on_token(tid):
        d = dec.push(tid)
        if d:
            loop.call_soon_threadsafe(queue.put_nowait, ("delta", d))

    def work():
        try:
            res = run_generate(entry, prompt_ids, max_new, params, on_token,
                               lambda: dec.stopped or cancel.is_set())
            tail = dec.flush()
            if tail:
                loop.call_soon_threadsafe(queue.put_nowait, ("delta", tail))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", res))
        except Exception as e:  # noqa: BLE001 - reported to the client as an SSE error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

    def chunk(delta_text=None, finish_reason=None, role=False):
        if chat:
            delta = {}
            if role:
                delta = {"role": "assistant", "content": "", "refusal": None}
            elif delta_text is not None:
                delta = {"content": delta_text}
            c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            c = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish_reason}
        return "data: " + json.dumps({**base, "object": chunk_obj, "choices": [c]}) + "\n\n"

    async def events():
        task = asyncio.ensure_future(anyio.to_thread.run_sync(work, limiter=st.sessions.limiter))
        try:
            if chat:
                yield chunk(role=True)
            elif echo:
                yield chunk(tok.decode(prompt_ids))
            while True:
                kind, val = await queue.get()
                if kind == "delta":
                    yield chunk(val)
                elif kind == "error":
                    err = val if isinstance(val, ApiError) else ApiError(
                        400 if isinstance(val, ValueError) else 500,
                        str(val) if isinstance(val, ValueError) else "internal error during generation")
                    yield "data: " + json.dumps(err.body()) + "\n\n"
                    break
                else:
                    res = val
                    yield chunk("" if not chat else None, finish(res, dec))
                    if include_usage:
                        u = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(res.ids),
                             "total_tokens": len(prompt_ids) + len(res.ids)}
                        yield "data: " + json.dumps({**base, "object": chunk_obj, "choices": [],
                                                     "usage": u}) + "\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()
            release()
            if not task.done():
                await asyncio.shield(task)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# --------------------------------------------------------------------------- routes


@compute_route
async def completions(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    check_fields(body, COMPLETION_FIELDS)
    entry = st.registry.get(body.get("model"))
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        ids = await anyio.to_thread.run_sync(lambda: entry.tokenizer.encode(p),
                                             limiter=st.sessions.limiter)
    elif isinstance(p, list):
        ids = _ids_ok(entry, p)
    else:
        raise ApiError(400, "prompt must be a string, a list of token ids, or a list of one of those",
                       param="prompt")
    return await _complete(request, entry, ids, body, chat=False)


MESSAGE_FIELDS = {"role", "content", "refusal", "annotations", "tool_calls", "name"}
ROLES = ("system", "developer", "user", "assistant")


def _message_text(m, i: int) -> str | None:
    c = m.get("content")
    if c is None or isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image_url", "input_image", "input_audio", "file"):
                raise ApiError(400, f"messages[{i}]: {kind} content parts are not supported: the "
                                    "model takes text only", param="messages")
            else:
                raise ApiError(400, f"messages[{i}]: content parts must be {{\"type\": \"text\", "
                                    "\"text\": str}", param="messages")
        return "".join(parts)
    raise ApiError(400, f"messages[{i}]: content must be a string or a list of text parts",
                   param="messages")


def _clean_messages(msgs) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)} (tool "
                                "messages need tool support, which this server lacks)",
                           param="messages")
        extra = sorted(set(m) - MESSAGE_FIELDS)
        if extra:
            raise ApiError(400, f"messages[{i}]: unknown field(s) {', '.join(extra)[:100]}",
                           param="messages")
        if m.get("name") is not None:
            raise ApiError(400, f"messages[{i}]: name is not supported by the chat template",
                           param="messages")
        if m.get("tool_calls") or m.get("refusal") or m.get("annotations"):
            raise ApiError(400, f"messages[{i}]: tool_calls, refusal and annotations must be empty",
                           param="messages")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"],
                      "content": _message_text(m, i)})
    return clean


def _check_tools(entry: ModelEntry, body) -> None:
    tools = body.get("tools")
    if tools in (None, []):
        return
    has = "tools" in (entry.tokenizer.config.get("chat_template") or "") \
        if isinstance(entry.tokenizer.config.get("chat_template"), str) else False
    why = ("its chat template has no tool support" if not has
           else "this server does not parse tool calls")
    raise ApiError(400, f"tools are not supported for model {entry.name!r}: {why}", param="tools")


@compute_route
async def chat_completions(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    check_fields(body, CHAT_FIELDS)
    entry = st.registry.get(body.get("model"))
    clean = _clean_messages(body.get("messages"))
    if not entry.model.causal:
        raise ApiError(400, f"model {entry.name!r} is an encoder: use /v1/embeddings")
    _check_tools(entry, body)
    try:
        ids = await anyio.to_thread.run_sync(lambda: entry.tokenizer.chat_ids(clean),
                                             limiter=st.sessions.limiter)
    except ApiError:
        raise
    except Exception as e:  # template errors (raise_exception in the template, ...)
        raise ApiError(400, f"chat template: {str(e)[:200]}", param="messages")
    return await _complete(request, entry, ids, body, chat=True)


def _embedding_inputs(body, limit: int) -> list:
    inp = body.get("input")
    if isinstance(inp, str) or (isinstance(inp, list) and inp and all(
            isinstance(i, int) and not isinstance(i, bool) for i in inp)):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(i, (str, list)) for i in inp):
        inputs = inp
    else:
        raise ApiError(400, "input must be a string, a list of strings, or token id list(s)", param="input")
    if len(inputs) > limit:
        raise ApiError(400, f"at most {limit} inputs per call", param="input")
    for x in inputs:
        if isinstance(x, str) and not x:
            raise ApiError(400, "input strings must not be empty", param="input")
    return inputs


@compute_route
async def embeddings(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    check_fields(body, EMBEDDING_FIELDS)
    entry = st.registry.get(body.get("model"))
    if entry.model.causal:
        raise ApiError(400, f"model {entry.name!r} is not an embedding model")
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None:
        dims = _num(body, "dimensions", None, 1, entry.model.hidden, integer=True)
    inputs = _embedding_inputs(body, st.limits.max_batch_inputs)

    def tokenize():  # in a worker: a 1 MB string takes about a second
        tok = entry.tokenizer if any(isinstance(x, str) for x in inputs) else None
        return [tok.encode(x) if isinstance(x, str) else _ids_ok(entry, x, "input") for x in inputs]

    release = st.inflight.acquire(client_id(request))
    try:
        seqs = await anyio.to_thread.run_sync(tokenize, limiter=st.sessions.limiter)
        for i, s in enumerate(seqs):
            if not s:
                raise ApiError(400, "an input is empty", param="input")
            if len(s) > entry.context:
                raise ApiError(400, f"input {i} is {len(s)} tokens, over the model's context of "
                                    f"{entry.context} (nothing is truncated: split it)", param="input")

        def run():
            be = entry.backend()
            return [np.asarray(be.forward(ids=s), dtype=np.float32).reshape(-1) for s in seqs]

        vecs = await anyio.to_thread.run_sync(run, limiter=st.sessions.limiter)
    finally:
        release()
    data = []
    for i, v in enumerate(vecs):
        if dims is not None:  # OpenAI's "dimensions": the first d components, unit length again
            v = v[:dims]
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(s) for s in seqs)
    return JSONResponse({"object": "list", "data": data, "model": entry.name,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


async def list_models(request: Request):
    st = request.app.state.pyapp
    return JSONResponse({"object": "list", "data": [e.info() for e in st.registry.entries.values()]})


async def get_model(request: Request):
    st = request.app.state.pyapp
    try:
        e = st.registry.get(request.path_params["name"])
    except ApiError as err:
        return JSONResponse(err.body(), status_code=err.status)
    return JSONResponse(e.info())
