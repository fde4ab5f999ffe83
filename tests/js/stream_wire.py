"""Run by tests/test_edge_stream_wire.py inside Pyodide (Node): the real pyapp/edge/stream.py and
stream.js fetch chunks from a real HTTP server that corrupts, cuts or stalls responses.

spec: {"base": url, "manifest": {...}, "scenarios": [{"name", "file", "opts", "no_subtle", "base"}]}
"""
import hashlib
import time


class KeepSink:
    """Test-only sink: copies each tensor's bytes out of the chunk buffer to compare them."""

    def __init__(self):
        self.parts = {}

    async def write(self, helper, data, slices):
        b = data.to_bytes()
        for name, off, ln in slices:
            self.parts[name] = b[off:off + ln]


def _no_subtle():
    """A page without crypto.subtle (plain http on a LAN address), as a browser presents it."""
    from pyodide.code import run_js
    run_js("Object.defineProperty(globalThis, 'crypto', { value: {}, configurable: true });"
           "globalThis.window = globalThis; globalThis.JS_SHA256_NO_NODE_JS = true;")


async def main(spec):
    from pyapp.edge import stream
    from pyapp.edge.errors import describe

    out = {}
    for sc in spec["scenarios"]:
        if sc.get("no_subtle"):
            _no_subtle()
        m = dict(spec["manifest"])
        chunk = dict(m["chunks"][0], file=sc["file"])
        sink = KeepSink()
        t0 = time.perf_counter()
        try:
            st = await stream.stream_chunks(m, [chunk], sink, sc.get("base", spec["base"]), opts=sc.get("opts"))
            joined = b"".join(sink.parts[t["name"]] for t in chunk["tensors"])
            c = st.chunks[0]
            out[sc["name"]] = {"ok": True, "sha256": hashlib.sha256(joined).hexdigest(),
                               "verified": c.verified, "refetches": st.refetches, "resumes": st.resumes,
                               "errors": st.errors, "requests": st.requests,
                               "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - the test checks the message
            d = describe(e)
            out[sc["name"]] = {"ok": False, "message": d["message"], "code": d["code"],
                               "seconds": time.perf_counter() - t0}
    return out
