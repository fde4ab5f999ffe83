"""Benchmark of the tokenizer bridge (issue 5): encoding a 100 KB text through pyapp.tokenizer in
Pyodide (on Tokenizers.js) against calling Tokenizers.js directly from JS, in the same Node process.
Also CPython's Rust ``tokenizers`` for reference.  Writes bench-results/tokenizer.json.

    python3 benchmarks/bench_tokenizer.py [--reps 15] [--kb 100]

Target (not a timed test): bridge median <= 1.2x direct JS median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_text(kb: int) -> str:
    """~kb KB of mixed text: English prose and Python source from the stdlib, some accents, CJK, emoji."""
    import argparse as _a
    import json as _j
    import textwrap as _t

    parts = []
    for mod in (_a, _j, _t):
        parts.append(Path(mod.__file__).read_text(encoding="utf-8"))
    extra = (
        "Café naïve façade — “quotes” … 你好，世界！日本語のテキスト。한국어 👨‍👩‍👧‍👦 🇫🇷 12345 67.89\r\n\t  "
    )
    text = ""
    i = 0
    while len(text.encode("utf-8")) < kb * 1000:
        text += parts[i % len(parts)][:20000] + extra
        i += 1
    data = text.encode("utf-8")[: kb * 1000]
    return data.decode("utf-8", errors="ignore")


def tokenizer_dirs(tmp: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import test_tokenizer as T  # the fixtures' helpers: store lookup, the small BPE

    dirs = {}
    smol = T._store_dir("smollm2-135m")
    if smol is not None:
        dirs["smollm2-135m"] = smol
    else:
        dirs["bpe-tiny"] = T.build_bpe_tokenizer(tmp / "bpe-tiny")
    minilm = T._minilm_dir(tmp)
    if minilm is not None:
        dirs["minilm-l6"] = minilm
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--kb", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench-results" / "tokenizer.json"))
    a = ap.parse_args()
    text = make_text(a.kb)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        dirs = tokenizer_dirs(tmp)
        spec = {
            "tokenizers": [{"name": n, "path": str(p)} for n, p in dirs.items()],
            "text": text,
            "reps": a.reps,
        }
        (tmp / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        proc = subprocess.run(
            ["node", str(REPO / "tests/js/run_pyodide.mjs"), str(REPO / "benchmarks/bench_tokenizer_workload.py"),
             str(tmp / "spec.json"), str(tmp / "out.json")],
            capture_output=True, text=True, cwd=REPO, timeout=1200,
        )
        if proc.returncode != 0:
            sys.exit(f"benchmark failed:\n{proc.stderr[-4000:]}")
        pyodide = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
        # CPython reference: the bridge on Rust tokenizers.
        from pyapp.tokenizer import Tokenizer

        cpython = {}
        for name, folder in dirs.items():
            tok = Tokenizer.from_pretrained(folder)
            tok.no_padding()
            tok.no_truncation()
            tok.encode(text)
            times = []
            for _ in range(a.reps):
                s = time.perf_counter()
                tok.encode(text)
                times.append((time.perf_counter() - s) * 1000)
            cpython[name] = {"encode_bridge_rust_ms_median": round(statistics.median(times), 3)}
    harness = pyodide.pop("_harness", {})
    results = {
        "benchmark": "tokenizer bridge: encode of a 100 KB text",
        "target": "encode_ratio_bridge_over_js <= 1.2",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), **harness},
        "pyodide_node": pyodide,
        "cpython": cpython,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    for name, r in pyodide.items():
        print(f"{name}: {r['text_bytes']} bytes, {r['n_ids']} ids | direct JS {r['encode_direct_js_ms_median']} ms, "
              f"bridge {r['encode_bridge_ms_median']} ms, ratio {r['encode_ratio_bridge_over_js']} "
              f"(paired {r['encode_ratio_median_of_pairs']}) | "
              f"CPython/Rust {cpython[name]['encode_bridge_rust_ms_median']} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
