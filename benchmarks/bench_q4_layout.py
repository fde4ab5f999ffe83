"""How fast a GPU streams Q4_1 weights in the layout the `sgqw` GEMV reads them, against the
same bytes read fully coalesced: the question behind the Q4_1 GEMVs' ~2.3 TB/s on the H200
(run 15c) where f16 GEMVs stream at ~3.3 TB/s.

    PYTHONPATH=$PWD python3 benchmarks/bench_q4_layout.py [--reps 50] [--out bench-results]

Three read-only kernels over one weight tensor of Llama 7B's GEMV shapes (N rows of K values as
GGUF Q4_1 blocks, 20 bytes per 32 values), the sgqw grid (128 lanes, 4 subgroups of R = 4 rows
per workgroup), each lane XOR-folding what it loads (a result no compiler can drop):
* `stored`: sgqw's pattern: lane l takes runs of four blocks l, l + 32, ... of its rows, five
  16-byte loads a run (the 32 lanes of one load instruction 80 bytes apart);
* `coalesced`: the same bytes of the same rows, lane l reading 16-byte word l, l + 32, ... of
  the row (one load instruction: 512 contiguous bytes) — the layout a repacked tensor allows;
* `floor`: the same grid with no work (`pyapp.bench.floor_dispatches`: a dispatch alone).
Timestamp queries around `reps` dependent dispatches (each writes what the next reads) in one
pass; µs per dispatch and GB/s of weight bytes, raw and with the floor taken off.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyapp.bench import floor_dispatches, gpu_pass_us  # noqa: E402

SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096))
R = 4

HEAD = """@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
const N: u32 = {N}u;
const NU: u32 = {NU}u;     // runs of four blocks (80 bytes = 5 vec4) per row
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {{
  let lane = l % 32u;
  let c0 = (wg.x * 4u + l / 32u) * {R}u;
  var acc = vec4u(out[0]);
"""
STORED = """  for (var r = 0u; r < {R}u; r++) {{
    let row = min(c0 + r, N - 1u) * NU * 5u;
    for (var u = lane; u < NU; u += 32u) {{
      let b = row + u * 5u;
      acc ^= w[b] ^ w[b + 1u] ^ w[b + 2u] ^ w[b + 3u] ^ w[b + 4u];
    }}
  }}
"""
COALESCED = """  for (var r = 0u; r < {R}u; r++) {{
    let row = min(c0 + r, N - 1u) * NU * 5u;
    for (var v = lane; v < NU * 5u; v += 160u) {{
      acc ^= w[row + v];
      if (v + 32u < NU * 5u) {{ acc ^= w[row + v + 32u]; }}
      if (v + 64u < NU * 5u) {{ acc ^= w[row + v + 64u]; }}
      if (v + 96u < NU * 5u) {{ acc ^= w[row + v + 96u]; }}
      if (v + 128u < NU * 5u) {{ acc ^= w[row + v + 128u]; }}
    }}
  }}
"""
TAIL = """  let s = acc.x ^ acc.y ^ acc.z ^ acc.w;
  if (s == 0x9E3779B9u) {{ out[1u + l] = s; }}
  if (l == 0u && wg.x == 0u) {{ out[0] = out[0] + 1u; }}
}}
"""


def sources(N, K):
    nu = K // 128
    subs = dict(N=N, NU=nu, R=R)
    return {"stored": (HEAD + STORED + TAIL).format(**subs),
            "coalesced": (HEAD + COALESCED + TAIL).format(**subs)}


def time_kernels(dev, N, K, reps):
    nbytes = N * (K // 32) * 20
    wbuf = dev.create_buffer(nbytes)
    dev.write(wbuf, 0, bytes(range(256)) * (min(nbytes, 1 << 20) // 256))   # not all zero
    obuf = dev.create_buffer(4 * 256)
    gx = -(-N // (4 * R))
    srcs = sources(N, K)
    groups = {n: [(p, dev.bind_group(p, {0: wbuf, 1: obuf}), gx, 1, 1)] for n, p in
              ((n, dev.pipeline(src)) for n, src in srcs.items())}
    groups["floor"] = floor_dispatches(dev, groups["stored"])
    best = dict(zip(groups, gpu_pass_us(dev, list(groups.values()), reps, rounds=3)))
    wbuf.destroy()
    row = {"N": N, "K": K, "MB": nbytes / 1e6, "workgroups": gx, "floor_us": best["floor"]}
    for n in ("stored", "coalesced"):
        row[n] = {"us": best[n], "GBps": nbytes / (best[n] * 1e-6) / 1e9,
                  "GBps_past_floor": nbytes / (max(best[n] - best["floor"], 1e-3) * 1e-6) / 1e9}
    return row


def timed_device():
    """The native device, or None (with a line printed) where the adapter has no timestamp-query."""
    from pyapp.gpu.native import NativeDevice
    dev = NativeDevice.create()
    if "timestamp-query" not in dev.features:
        print("adapter without timestamp-query")
        return None
    return dev


def parse_shapes(arg, default=SHAPES):
    """"NxK,NxK" -> [(N, K), ...]; None: `default` (Llama 7B's GEMV shapes)."""
    return [tuple(map(int, s.split("x"))) for s in arg.split(",")] if arg else list(default)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--shapes", help="comma list of NxK (default: Llama 7B's)")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args(argv)
    dev = timed_device()
    if dev is None:
        return 1
    shapes = parse_shapes(a.shapes)
    rows = []
    print(f"{'shape':>12s} {'MB':>6s} {'floor us':>8s} | {'stored us':>9s} {'GB/s':>6s} {'past floor':>10s} | "
          f"{'coalesced us':>12s} {'GB/s':>6s} {'past floor':>10s}")
    for N, K in shapes:
        r = time_kernels(dev, N, K, a.reps)
        rows.append(r)
        s, c = r["stored"], r["coalesced"]
        print(f"{N:>6d}x{K:<5d} {r['MB']:6.1f} {r['floor_us']:8.2f} | {s['us']:9.2f} {s['GBps']:6.0f} "
              f"{s['GBps_past_floor']:10.0f} | {c['us']:12.2f} {c['GBps']:6.0f} {c['GBps_past_floor']:10.0f}", flush=True)
    out = Path(a.out) / f"q4-layout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"adapter": dev.info, "reps": a.reps, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
