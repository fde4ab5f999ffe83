"""Runs inside Pyodide (via tests/js/run_pyodide.mjs): times Tokenizers.js called from JS directly
against the same encode through pyapp.tokenizer, on the text in spec["text"]."""

import statistics
import time


async def main(spec):
    import js
    from pyapp.tokenizer import Tokenizer, load_js_modules

    await load_js_modules(spec["modules"]["tokenizers"], spec["modules"]["jinja"])
    prefix = spec.get("fs_prefix", "")
    text = spec["text"]
    reps = spec.get("reps", 25)
    # Pure-JS loop: no Python in the timed region.
    js_loop = js.Function.new(
        "tok", "text", "n",
        "const t = []; let ids = null;"
        "for (let i = 0; i < n; i++) { const s = performance.now(); ids = tok.encode(text).ids; t.push(performance.now() - s); }"
        "return {times: t, n_ids: ids.length};",
    )
    js_dec_loop = js.Function.new(
        "tok", "ids", "n",
        "const t = []; const opt = {skip_special_tokens: true, clean_up_tokenization_spaces: false};"
        "for (let i = 0; i < n; i++) { const s = performance.now(); tok.decode(ids, opt); t.push(performance.now() - s); }"
        "return t;",
    )
    out = {}
    for entry in spec["tokenizers"]:
        tok = Tokenizer.from_file(prefix + entry["path"] + "/tokenizer.json")
        tok.no_padding()
        tok.no_truncation()
        js_text = js.String(text)  # one JS string, reused by the JS loop
        for _ in range(3):  # warm-up both paths (JIT, caches)
            js_loop(tok.native, js_text, 1)
            tok.encode(text)
        # Interleaved, so that both paths see the same machine state (this box is shared and noisy).
        js_times, br, ratios = [], [], []
        ids = None
        n_direct = None
        for _ in range(reps):
            direct = js_loop(tok.native, js_text, 1).to_py()
            js_times.append(direct["times"][0])
            n_direct = direct["n_ids"]
            s = time.perf_counter()
            ids = tok.encode(text).ids
            br.append((time.perf_counter() - s) * 1000)
            ratios.append(br[-1] / js_times[-1])
        # Decode: bridge (Python list in, str out) against JS decode of a JS array.
        from pyodide.ffi import to_js

        js_ids = to_js(ids)
        js_dec = list(js_dec_loop(tok.native, js_ids, reps).to_py())
        dec = []
        for _ in range(reps):
            s = time.perf_counter()
            tok.decode(ids)
            dec.append((time.perf_counter() - s) * 1000)
        # Streaming decode of the first 2000 ids, per token.
        stream = tok.decode_stream()
        s = time.perf_counter()
        n = min(2000, len(ids))
        for i in ids[:n]:
            stream.step(i)
        stream_ms = (time.perf_counter() - s) * 1000
        med_js, med_br = statistics.median(js_times), statistics.median(br)
        out[entry["name"]] = {
            "text_bytes": len(text.encode("utf-8")),
            "n_ids": len(ids),
            "n_ids_direct_js": int(n_direct),
            "reps": reps,
            "encode_direct_js_ms_median": round(med_js, 3),
            "encode_bridge_ms_median": round(med_br, 3),
            "encode_ratio_bridge_over_js": round(med_br / med_js, 4),
            "encode_ratio_median_of_pairs": round(statistics.median(ratios), 4),
            "encode_direct_js_ms_min": round(min(js_times), 3),
            "encode_bridge_ms_min": round(min(br), 3),
            "decode_direct_js_ms_median": round(statistics.median(js_dec), 3),
            "decode_bridge_ms_median": round(statistics.median(dec), 3),
            "decode_stream_us_per_token": round(stream_ms * 1000 / n, 2),
        }
    return out
