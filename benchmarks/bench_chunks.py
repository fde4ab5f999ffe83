"""A step-by-step token's pass in one submit against chunked submits and against the next step
encoded ahead (issue 16: host encoding < 10 % of a token; `GpuBackend.submit_chunks`,
backend.SUBMIT_CHUNKS; `GpuBackend.encode_ahead`, backend.ENCODE_AHEAD), native binding.

    PYTHONPATH=$PWD python3 benchmarks/bench_chunks.py [--shapes smollm2-135m-f16,llama-7b-f16]
        [--rules none,16:64,8:32,32:0,16:16,16:16+ahead] [--tokens 32] [--rounds 5]

A rule is first:rest (or none) and, with "+ahead", the next step's command buffer encoded right
after each step's submit while the GPU runs it (a step then sends it whole).

Per rule and per token (random weights of each shape, autotuned variants, greedy, 32-token
prompt), two forms of the same step, alternating token by token on one cache:
* full: `GpuBackend.step` (encode and submit chunk by chunk, then read the token);
* pre-encoded: the step's command buffers (one per chunk) encoded first, untimed, then the clock
  runs over what `step` does but encoding: prepare, writes, the submits, the readback.
exposed encoding = full - pre-encoded: the encoding the token waits for. host encode = the
untimed encoding's own wall time (CPU time on the host). Rules run interleaved round by round;
each figure is the median over a round's tokens, then best and median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_compare as bc  # noqa: E402


def rule_name(r):
    chunks, ahead = r
    return ("none" if not chunks else f"{chunks[0]}:{chunks[1]}") + ("+ahead" if ahead else "")


def parse_rule(text):
    """"16:16+ahead" -> ((16, 16), True); "none" -> (None, False)."""
    from pyapp.bench import parse_chunk_rule
    base, plus, _ = text.partition("+ahead")
    return parse_chunk_rule(base or "none"), bool(plus)


def pre_encoded_step(be, tok, cache, sp, n, rule):
    """(wall s of the step without its encoding, wall s of the encoding, token): `step`'s work
    split so that the chunks' command buffers are encoded before the clock starts."""
    from pyapp.gpu.device import chunk_ends
    dev, N = be.device, be.model.n_layers
    copies = [(be.tok_buf, 0, be.readback, 0, 4)]
    rec, T, pos0, _h, _w = be._prepare([tok], None, cache, 0, N, True, False, True, sp, n)
    ends = chunk_ends(be.step_dispatches, rule[0])
    t = time.perf_counter()
    cbs = list(dev.chunk_buffers(rec, copies, ends))       # what submit encodes, all of it first
    enc = time.perf_counter() - t
    t = time.perf_counter()
    rec, T, pos0, _h, writes = be._prepare([tok], None, cache, 0, N, True, False, True, sp, n)
    for buf, off, data in writes:
        dev.write(buf, off, data)
    for cb, cp in cbs:
        dev.submit_buffer(cb, cp)
    cache.length = pos0 + T
    tok = struct.unpack("<I", dev.read(be.readback, 0, 4))[0]
    return time.perf_counter() - t, enc, tok


def one_round(be, rule, prompt, tokens, sp):
    # +ahead: the pre-encoded step submits its own buffers (not through Device.submit), so the
    # buffer the full step before it encoded ahead waits for the full step after: as in a step
    # loop, it was encoded while the GPU ran an earlier step
    be.submit_chunks, be.encode_ahead = rule
    c = be.new_cache(len(prompt) + 2 * tokens + 8)
    tok = be.step(ids=prompt, cache=c, params=sp)
    full, pre, enc, ids = [], [], [], [tok]
    for n in range(1, 2 * tokens + 1):
        if n % 2:
            t = time.perf_counter()
            tok = be.step(ids=[tok], cache=c, params=sp, n=n)
            full.append(time.perf_counter() - t)
        else:
            w, e, tok = pre_encoded_step(be, tok, c, sp, n, rule)
            pre.append(w)
            enc.append(e)
        ids.append(tok)
    med = statistics.median
    return {"wall_ms": med(full) * 1e3, "pre_encoded_ms": med(pre) * 1e3, "encode_ms": med(enc) * 1e3}, ids


def one_shape(dev, name, rules, prompt_tokens, tokens, rounds):
    from pyapp.gpu.device import chunk_ends
    from pyapp.sampling import SamplingParams
    be = bc.random_backend(dev, *bc.SHAPES[name])
    sp = SamplingParams()
    prompt = [1 + (i * 7919) % (be.model.vocab - 1) for i in range(prompt_tokens)]
    runs = {rule_name(r): [] for r in rules}
    ids = {}
    for r in rules:                       # warm-up: pipelines, plans, the readback path
        one_round(be, r, prompt, 2, sp)
    for _ in range(rounds):
        for r in rules:
            m, ids[rule_name(r)] = one_round(be, r, prompt, tokens, sp)
            runs[rule_name(r)].append(m)
    nd = be.step_dispatches
    out = []
    for r in rules:
        k = rule_name(r)
        row = {"shape": name, "rule": k, "dispatches": nd, "submits": 1 if r[1] else len(chunk_ends(nd, r[0]) or [0])}
        for f in ("wall_ms", "pre_encoded_ms", "encode_ms"):
            v = [m[f] for m in runs[k]]
            row[f] = {"best": min(v), "median": statistics.median(v), "rounds": v}
        ex = [m["wall_ms"] - m["pre_encoded_ms"] for m in runs[k]]
        row["exposed_ms"] = {"best": min(ex), "median": statistics.median(ex), "rounds": ex}
        row["exposed_share"] = row["exposed_ms"]["median"] / row["wall_ms"]["median"]
        row["ids_equal_none"] = ids[k] == ids[rule_name(rules[0])]
        out.append(row)
    row0 = out[0]
    for row in out:
        row["wall_vs_first"] = row["wall_ms"]["median"] / row0["wall_ms"]["median"]
    be.destroy()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m-f16,gemma3-270m-f16,llama-7b-f16")
    ap.add_argument("--rules", default="none,16:64,8:32,32:0,16:16,16:16+ahead",
                    help="comma list of first:rest (none: one submit), +ahead: the next step encoded "
                         "ahead; the first is the baseline")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32, help="tokens of each form per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    from pyapp.gpu.backend import ENCODE_AHEAD, SUBMIT_CHUNKS
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    rules = [parse_rule(s) for s in a.rules.split(",")]
    print(f"adapter: {dev.info.get('device') or dev.info.get('description')}; default rule "
          f"{rule_name((SUBMIT_CHUNKS, ENCODE_AHEAD))}; ms a step-by-step token, median of {a.tokens} tokens, "
          f"best / median of {a.rounds} rounds")
    print(f"{'shape':18s} {'rule':6s} {'disp':>4s} {'subm':>4s} {'wall':>13s} {'pre-encoded':>13s} "
          f"{'host encode':>13s} {'exposed':>13s} {'exposed %':>9s} {'vs ' + rule_name(rules[0]):>8s} ids")
    rows = []
    for name in a.shapes.split(","):
        for row in one_shape(dev, name, rules, a.prompt_tokens, a.tokens, a.rounds):
            rows.append(row)
            f = " ".join(f"{row[k]['best']:6.3f}/{row[k]['median']:6.3f}"
                         for k in ("wall_ms", "pre_encoded_ms", "encode_ms", "exposed_ms"))
            print(f"{name:18s} {row['rule']:6s} {row['dispatches']:4d} {row['submits']:4d} {f} "
                  f"{100 * row['exposed_share']:8.1f}% {row['wall_vs_first']:8.3f} "
                  f"{'=' if row['ids_equal_none'] else 'DIFF'}", flush=True)
    out = Path(a.out) / f"chunks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "default_rule": rule_name((SUBMIT_CHUNKS, ENCODE_AHEAD)), "args": vars(a),
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
