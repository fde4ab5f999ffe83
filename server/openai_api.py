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
from starlette.responses import JSONResponse, StreamingResponse

from pyapp.decode import check_context, generate
from pyapp.sampling import SamplingParams, sample_numpy

from .httputil import compute_route, read_json
from .runtime import ApiError, ModelEntry


# --------------------------------------------------------------------------- parameters


def _num(body, key, default, lo=None, hi=None, integer=False):
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ApiError(400, f"{key} must be a {'integer' if integer else 'number'}", param=key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"{key} must be in [{lo}, {hi}]", param=key)
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
    if n not in (1, None):
        raise ApiError(400, "only n=1 is supported", param="n")


def _ids_ok(entry: ModelEntry, ids, what="prompt"):
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ApiError(400, f"{what} token ids must be a list of integers")
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


def run_generate(entry: ModelEntry, prompt_ids, max_new, params, on_token=None, should_stop=None):
    """Blocking: the numpy decode loop over the whole model with a private KV cache."""
    be = entry.backend("f32")
    cache = be.new_cache(capacity=len(prompt_ids) + max_new)

    def step(ids, n):
        logits = be.forward(ids=ids, cache=cache)
        return sample_numpy(logits[-1], params, n)

    return generate(step, prompt_ids, max_new, entry.eos_ids, on_token, should_stop)


def _now():
    return int(time.time())


async def _complete(request: Request, entry: ModelEntry, prompt_ids, body, *, chat: bool):
    st = request.app.state.pyapp
    params = sampling_from(body)
    stops = stops_from(body)
    _check_n(body)
    max_new = plan(entry, prompt_ids, body, "max_completion_tokens" if chat else "max_tokens",
                   None if chat else 16)
    stream = bool(body.get("stream", False))
    echo = bool(body.get("echo", False)) and not chat
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = _now()
    tok = entry.tokenizer
    base = {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": entry.name, "system_fingerprint": "pyapp"}

    def finish(res, dec):
        if dec.stopped:
            return "stop"
        return "stop" if res.finish_reason == "stop" else "length"

    if not stream:
        dec = Decoder(tok, stops)
        res = await anyio.to_thread.run_sync(
            lambda: run_generate(entry, prompt_ids, max_new, params, dec.push, lambda: dec.stopped),
            limiter=st.sessions.limiter)
        text = dec.text if dec.stopped else dec.text.rstrip("\ufffd")
        if echo:
            text = tok.decode(prompt_ids) + text
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(res.ids),
                 "total_tokens": len(prompt_ids) + len(res.ids)}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish(res, dec)}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish(res, dec)}
        return JSONResponse({**base, "choices": [choice], "usage": usage,
                             "pyapp": {"ids": res.ids}})

    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False)) \
        if isinstance(body.get("stream_options"), dict) else False
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
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
                delta = {"role": "assistant", "content": ""}
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
                    err = ApiError(400 if isinstance(val, ValueError) else 500, str(val))
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
            if not task.done():
                await asyncio.shield(task)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# --------------------------------------------------------------------------- routes


@compute_route
async def completions(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    entry = st.registry.get(body.get("model"))
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        ids = await anyio.to_thread.run_sync(lambda: entry.tokenizer.encode(p))
    elif isinstance(p, list):
        ids = _ids_ok(entry, p)
    else:
        raise ApiError(400, "prompt must be a string, a list of token ids, or a list of one of those",
                       param="prompt")
    return await _complete(request, entry, ids, body, chat=False)


def _message_text(m):
    c = m.get("content")
    if c is None or isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, "message content must be a string or a list of text parts", param="messages")


@compute_route
async def chat_completions(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    entry = st.registry.get(body.get("model"))
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    clean = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message needs a string role", param="messages")
        clean.append({"role": m["role"], "content": _message_text(m)})
    if not entry.model.causal:
        raise ApiError(400, f"model {entry.name!r} is an encoder: use /v1/embeddings")
    try:
        ids = await anyio.to_thread.run_sync(lambda: entry.tokenizer.chat_ids(clean))
    except ApiError:
        raise
    except Exception as e:  # template errors (raise_exception in the template, ...)
        raise ApiError(400, f"chat template: {e}", param="messages")
    return await _complete(request, entry, ids, body, chat=True)


@compute_route
async def embeddings(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    entry = st.registry.get(body.get("model"))
    if entry.model.causal:
        raise ApiError(400, f"model {entry.name!r} is not an embedding model")
    inp = body.get("input")
    fmt = body.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    if isinstance(inp, str) or (isinstance(inp, list) and inp and all(isinstance(i, int) for i in inp)):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(i, (str, list)) for i in inp):
        inputs = inp
    else:
        raise ApiError(400, "input must be a string, a list of strings, or token id list(s)", param="input")
    if len(inputs) > st.limits.max_batch_inputs:
        raise ApiError(400, f"at most {st.limits.max_batch_inputs} inputs per call", param="input")
    tok = None
    seqs = []
    for x in inputs:
        if isinstance(x, str):
            if not x:
                raise ApiError(400, "input strings must not be empty", param="input")
            tok = tok or entry.tokenizer
            seqs.append(tok.encode(x))
        else:
            seqs.append(_ids_ok(entry, x, "input"))
    for s in seqs:
        if not s:
            raise ApiError(400, "an input is empty", param="input")
        if len(s) > entry.context:
            raise ApiError(400, f"context overflow: input of {len(s)} tokens > {entry.context}",
                           param="input")

    def run():
        be = entry.backend("f32")
        return [np.asarray(be.forward(ids=s), dtype=np.float32).reshape(-1) for s in seqs]

    vecs = await anyio.to_thread.run_sync(run, limiter=st.sessions.limiter)
    data = []
    for i, v in enumerate(vecs):
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
