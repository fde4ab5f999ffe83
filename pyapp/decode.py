"""The decode loop, shared by every backend and by the split.

A backend supplies `step(ids, n) -> token id`: run the model on the new ids
(the whole prompt first, then one token at a time) and pick token number n.
A GPU backend with every layer and the sampler on the GPU can instead run it
pipelined (`generate_pipelined_async`): step n+1 is submitted before token n is
read, so the host's encoding overlaps the GPU. The same `_decode` loop decides
what happens with each token; the driver only runs steps ahead of it.
Stdlib only: the edge runs this same loop in Pyodide.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class GenerationResult:
    prompt_ids: list
    ids: list = field(default_factory=list)
    finish_reason: str = "length"     # "length" | "stop" | "cancelled"
    time_to_first_token: float = 0.0
    decode_seconds: float = 0.0

    @property
    def tokens_per_second(self):
        n = len(self.ids) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0


def check_context(n_prompt, max_new_tokens, context):
    if n_prompt == 0:
        raise ValueError("the prompt is empty")
    if n_prompt > context:
        raise ValueError(f"prompt of {n_prompt} tokens is longer than the context of {context}")
    return min(max_new_tokens, context - n_prompt)


def _decode(res, max_new_tokens, eos_ids, on_token, should_stop):
    """The loop itself, as a generator: yields (ids, n) and is sent back token n.
    The sync and async drivers below feed it, so there is one loop for both."""
    if max_new_tokens <= 0:
        return
    t0 = time.perf_counter()
    tok = yield list(res.prompt_ids), 0
    t1 = time.perf_counter()
    res.time_to_first_token = t1 - t0
    eos = set(eos_ids)
    while True:
        res.ids.append(tok)
        if on_token is not None:
            on_token(tok)
        if tok in eos:
            res.finish_reason = "stop"
            break
        if len(res.ids) >= max_new_tokens:
            break
        if should_stop is not None and should_stop():
            res.finish_reason = "cancelled"
            break
        tok = yield [tok], len(res.ids)
    res.decode_seconds = time.perf_counter() - t1


def generate(step, prompt_ids, max_new_tokens, eos_ids=(), on_token=None, should_stop=None):
    """Greedy/sampled decode. `on_token(id)` is called for each new token as it
    arrives; `should_stop()` is polled between tokens."""
    res = GenerationResult(prompt_ids=list(prompt_ids))
    loop = _decode(res, max_new_tokens, eos_ids, on_token, should_stop)
    try:
        req = next(loop)
        while True:
            req = loop.send(step(*req))
    except StopIteration:
        return res


async def generate_async(step, prompt_ids, max_new_tokens, eos_ids=(), on_token=None,
                         should_stop=None):
    """`generate` with `await step(ids, n)`: the edge's decode loop in Pyodide."""
    res = GenerationResult(prompt_ids=list(prompt_ids))
    loop = _decode(res, max_new_tokens, eos_ids, on_token, should_stop)
    try:
        req = next(loop)
        while True:
            req = loop.send(await step(*req))
    except StopIteration:
        return res


class InFlight:
    """How many steps a pipelined decode keeps in flight. A fixed count is either too few where
    a readback resolves late (Deno resolves mapAsync on a ~10 ms poll: the 7B shape on the H200
    ran 135 / 164 / 191 tok/s at 8 / 16 / 32 steps, run 14a) or too many where a step is slow
    (SwiftShader: seconds a step, all run and thrown away after a stop token). With `ahead_s`
    the count follows the time between tokens: about `ahead_s` seconds of steps, between 2 and
    `depth`; without it, always `depth`."""

    def __init__(self, depth, ahead_s=None):
        self.cap, self.ahead_s = depth, ahead_s
        self.depth = depth if ahead_s is None else min(2, depth)
        self._last = None
        self._interval = None

    def token_read(self):
        if self.ahead_s is None:
            return
        now = time.perf_counter()
        if self._last is not None:
            dt = now - self._last       # a token every dt s: smoothed, several resolve together
            self._interval = dt if self._interval is None else 0.75 * self._interval + 0.25 * dt
            want = int(self.ahead_s / max(self._interval, 1e-6)) + 1
            self.depth = max(min(2, self.cap), min(self.cap, want))
        self._last = now


async def generate_pipelined_async(pipe, prompt_ids, max_new_tokens, eos_ids=(), on_token=None,
                                   should_stop=None, depth=2, ahead_s=None):
    """`generate_async` with up to `depth` steps in flight. `pipe` has
    `submit(ids, n)` (ids None: the token the previous step's sampler left on the GPU),
    `async read(n)` -> token n, and `async drop(k)`: cut the last k submitted steps
    (their KV rows) and finish their pending reads. When the loop ends (stop token,
    length, should_stop, or an exception) the steps run ahead of it are dropped, so the
    cache holds exactly prompt + the returned tokens (less the last one, not yet fed back),
    as after the step loop. Token n is read, streamed and checked before token n+1 is.
    `ahead_s`: keep about that many seconds of steps in flight instead of always `depth`
    (at least 2, at most `depth`), from the measured time between tokens (`InFlight`)."""
    res = GenerationResult(prompt_ids=list(prompt_ids))
    loop = _decode(res, max_new_tokens, eos_ids, on_token, should_stop)
    ahead = InFlight(depth, ahead_s)
    submitted = 0
    try:
        try:
            ids, n = next(loop)
        except StopIteration:
            return res
        pipe.submit(ids, 0)
        submitted = 1
        while True:
            # step n (the one token n comes from) is in flight; run up to depth - 1 more
            while submitted < max_new_tokens and submitted - n < ahead.depth:
                pipe.submit(None, submitted)
                submitted += 1
            tok = await pipe.read(n)
            ahead.token_read()
            try:
                ids, n = loop.send(tok)      # ([tok], n + 1): already submitted with tok on the GPU
            except StopIteration:
                return res
    finally:
        if submitted:
            await pipe.drop(submitted - len(res.ids))
