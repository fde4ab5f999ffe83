"""A > 4 GiB model into the browser: headless Chromium (SwiftShader WebGPU) against the real
server app on loopback (the harness of tests/test_edge_browser.py).  Prints numbers and writes
them to a results file; asserts nothing timed.

    python3 benchmarks/bench_big.py [--layers 24] [--runs 2] [--out bench-results/big-model.json]

`pyapp synth` writes a Llama (hidden 2048, FFN 5632, 32 / 4 heads, SmolLM2's vocabulary; 24
layers = 4.63 GB of f32) into a private store, deleted at the end.  For each run a fresh page
loads it at split 0 (the adapter's maximum limits) and generates one greedy token, then the
same at split 20; reported per load: seconds, MB/s, JS heap before and at its peak, the largest
JS buffer, wasm heap before/after, GPU bytes resident, requests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

SMOLLM2 = Path.home() / ".cache" / "pyapp" / "models" / "smollm2-135m"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
          "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
          "rope_theta": 10000.0, "vocab_size": 49152, "tie_word_embeddings": True,
          "bos_token_id": 1, "eos_token_id": 2}


def load_once(browser, url, split, query=""):
    """One fresh page: generate 1 greedy token at `split`; the load's figures."""
    page = browser.new_page()
    page.set_default_timeout(900_000)
    try:
        page.goto(f"{url}/?nosw=1{query}")
        page.wait_for_function("() => window.pyapp && window.pyapp.ready")
        page.evaluate("() => pyapp.ready")
        t0 = time.time()
        r = page.evaluate("(k) => pyapp.generate('The capital of France is', {model: 'big', greedy: true, "
                          "maxNewTokens: 1, split: k, progressive: false})", split)
        wall = time.time() - t0
    finally:
        page.close()
    st, ld = r["stats"], r["stats"]["load"]
    return {"split": split, "weight_bytes": st["weight_bytes"], "load_seconds": st["load_seconds"],
            "stream_seconds": ld["seconds"], "mb_per_s": ld["mb_per_s"],
            "js_heap_before": ld["js_heap_before"], "peak_js_heap": ld["peak_js_heap"],
            "largest_js_buffer": ld["largest_buffer"], "wasm_heap_before": ld["wasm_heap_before"],
            "wasm_heap_after": ld["wasm_heap_after"], "wasm_heap_growth": ld["wasm_heap_growth"],
            "gpu_bytes": st["gpu_bytes"], "requests": ld["requests"], "first_token_wall_s": round(wall, 1),
            "time_to_first_token": st["time_to_first_token"], "ids": r["ids"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "big-model.json"))
    a = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-big-"))
    os.environ["PYAPP_MODELS_DIR"] = str(root / "store")
    from playwright.sync_api import sync_playwright

    from pyapp.synth import synth
    from test_edge_harness import LiveServer, launch

    (root / "config.json").write_text(json.dumps(dict(CONFIG, num_hidden_layers=a.layers)))
    t0 = time.time()
    path = synth("big", root / "config.json", tokenizer_from=str(SMOLLM2), seed=5)
    meta = json.loads((path / "pyapp.json").read_text())
    out = {"machine": f"{platform.node()} {os.cpu_count()} cores", "layers": a.layers,
           "file_bytes": (path / "model.safetensors").stat().st_size,
           "synth_seconds": round(time.time() - t0, 1), "synth_peak_rss_mb": meta["conversion"]["peak_rss_mb"],
           "runs": []}
    print(f"synth: {out['file_bytes'] / 1e9:.2f} GB in {out['synth_seconds']} s "
          f"(peak RSS {out['synth_peak_rss_mb']} MB)", flush=True)
    server = LiveServer(models=("big",), preload=False)
    try:
        with sync_playwright() as p:
            b = launch(p, webgpu=True)
            try:
                for i in range(a.runs):
                    for split in (0, 20):
                        r = load_once(b, server.url, split)
                        r["run"] = i + 1
                        out["runs"].append(r)
                        print(f"run {i + 1} split {split}: {r['weight_bytes'] / 1e9:.2f} GB in {r['stream_seconds']:.1f} s "
                              f"= {r['mb_per_s']:.0f} MB/s; JS heap {r['js_heap_before'] / 1e6:.0f} -> peak "
                              f"{r['peak_js_heap'] / 1e6:.0f} MB; largest JS buffer {r['largest_js_buffer'] / 1e6:.1f} MB; "
                              f"wasm heap {r['wasm_heap_before'] / 1e6:.1f} -> {r['wasm_heap_after'] / 1e6:.1f} MB; "
                              f"GPU {r['gpu_bytes'] / 1e9:.2f} GB; {r['requests']} requests; "
                              f"first token after {r['first_token_wall_s']} s", flush=True)
            finally:
                b.close()
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
