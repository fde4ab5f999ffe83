"""The per-model manifest the edge reads to fetch exactly its layers (schema: docs/server.md).

Hashing a 540 MB file takes seconds, so a manifest is computed once per (dtype, file sizes and
mtimes) and cached next to the model as ``<store>/<name>/.pyapp-manifest-<dtype>.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from pyapp import formats
from pyapp.weightfile import eos_ids, load_model_dir, read_safetensors_header, weight_files

MANIFEST_VERSION = 3   # 2: tied_embeddings; eos_ids include generation_config.json; 3: pieces
# a chunk is also hashed in pieces of at most this many bytes: the edge verifies and uploads a
# piece at a time, so its memory stays bounded whatever the size of a layer or a table
PIECE_BYTES = 16 << 20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EXTRA_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES
DTYPES = formats.SERVED_TAGS
ST_DTYPES = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64", "I32": "i32",
             "I16": "i16", "I8": "i8", "U8": "u8", "BOOL": "bool"}

_locks: dict = {}
_memory: dict = {}  # (folder, dtype) -> manifest, while its _stamp holds
_locks_guard = threading.Lock()


def file_url(name: str, fname: str, sha256: str) -> str:
    return f"/models/{name}/{sha256[:16]}/{fname}"


def _sha256_file(path: Path, buf=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(buf)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _piece_cuts(tensors, ranges, piece=None) -> list:
    """[[start, length]] of a chunk's pieces in its byte stream (its ranges concatenated), each
    at most ``piece`` (default PIECE_BYTES) bytes; a cut inside a tensor falls on a 4-byte
    boundary of that tensor (the GPU takes writes at multiples of 4)."""
    piece = PIECE_BYTES if piece is None else int(piece)
    starts, pos = {}, 0
    for off, length in ranges:                   # file offset -> stream offset, per range
        starts[off] = pos
        pos += length
    total = pos
    spans = []
    for t in tensors:
        r = max(o for o in starts if o <= t["offset"])
        spans.append((starts[r] + t["offset"] - r, int(t["length"])))
    out, pos = [], 0
    while total - pos > piece:
        cut = pos + piece
        for s0, n in spans:
            if s0 < cut < s0 + n:
                cut = s0 + (cut - s0) // 4 * 4
        out.append([pos, cut - pos])
        pos = cut
    out.append([pos, total - pos])
    return out


def _sha256_pieces(path: Path, ranges, cuts, buf=1 << 20) -> tuple[str, list]:
    """(sha256 of the concatenated ranges, [sha256 of each piece]) in one read."""
    whole = hashlib.sha256()
    hs = [hashlib.sha256() for _ in cuts]
    pos, k = 0, 0
    with open(path, "rb") as f:
        for off, length in ranges:
            f.seek(off)
            left = length
            while left > 0:
                n = min(buf, left, cuts[k][0] + cuts[k][1] - pos)
                b = f.read(n)
                if len(b) != n:
                    raise ValueError(f"{path.name} is shorter than its header says")
                whole.update(b)
                hs[k].update(b)
                pos += n
                left -= n
                if pos == cuts[k][0] + cuts[k][1] and k + 1 < len(cuts):
                    k += 1
    return whole.hexdigest(), [h.hexdigest() for h in hs]


def repiece(chunk: dict, path: Path, piece_bytes: int) -> dict:
    """``chunk`` (of a manifest over the weight file ``path``) with its pieces cut again at most
    ``piece_bytes`` long and hashed from the file: for a static site whose files must be smaller
    than PIECE_BYTES (pyapp build-site --max-file-size)."""
    cuts = _piece_cuts(chunk["tensors"], chunk["ranges"], piece_bytes)
    sha, piece_sha = _sha256_pieces(Path(path), chunk["ranges"], cuts)
    if sha != chunk["sha256"]:
        raise ValueError(f"{Path(path).name} changed since its manifest was made (chunk {chunk['id']})")
    return dict(chunk, pieces=[[a, n, h] for (a, n), h in zip(cuts, piece_sha)])


def _coalesce(spans):
    """Sorted, merged [offset, length] spans (contiguous or overlapping ones join)."""
    out = []
    for off, length in sorted(spans):
        if out and off <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], off + length)
            out[-1][1] = end - out[-1][0]
        else:
            out.append([off, length])
    return out


def _stamp(paths) -> dict:
    out = {}
    for p in paths:
        st = os.stat(p)
        out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def model_files(model_dir: Path, dtype: str) -> list[Path]:
    """Every file a manifest of this dtype names (weights + config + tokenizer)."""
    weights = sorted(set(weight_files(model_dir, dtype).values()), key=lambda p: p.name)
    index = model_dir / (formats.weight_file_name(dtype) + ".index.json")
    extra = [model_dir / n for n in EXTRA_FILES if (model_dir / n).is_file()]
    if index.is_file():
        extra.append(index)
    return weights + extra


def build_manifest(name: str, model_dir: Path, dtype: str = "f32") -> dict:
    model_dir = Path(model_dir)
    model = load_model_dir(model_dir, dtype)
    wf = weight_files(model_dir, dtype)
    files = model_files(model_dir, dtype)
    stamp = _stamp(files)
    file_entries = {}
    for p in files:
        sha = _sha256_file(p)
        file_entries[p.name] = {"url": file_url(name, p.name, sha), "size": stamp[p.name][0],
                                "sha256": sha}
    headers = {}
    for p in set(wf.values()):
        header, data_start = read_safetensors_header(p)
        headers[p] = (header, data_start)

    def tensor_entry(tname):
        p = wf[tname]
        header, data_start = headers[p]
        t = header[tname]
        a, b = t["data_offsets"]
        # dtype: the tensor's weight format (a block file names each tensor's ggml type);
        # shape: in values, whatever the format (what GpuBackend(shapes=...) takes)
        fmt = t["format"]
        return p, {"name": tname, "offset": data_start + a, "length": b - a,
                   "dtype": fmt or ST_DTYPES.get(t["dtype"], t["dtype"].lower()),
                   "shape": list(formats.get(fmt).value_shape(t["shape"])) if fmt else t["shape"]}

    def chunks_for(cid, layer, names):
        by_file: dict = {}
        for n in names:
            p, e = tensor_entry(n)
            by_file.setdefault(p, []).append(e)
        out = []
        for p in sorted(by_file, key=lambda p: p.name):
            tensors = sorted(by_file[p], key=lambda e: e["offset"])
            ranges = _coalesce([(e["offset"], e["length"]) for e in tensors])
            cuts = _piece_cuts(tensors, ranges)
            sha, piece_sha = _sha256_pieces(p, ranges, cuts)
            out.append({"id": cid, "layer": layer, "file": p.name, "ranges": ranges,
                        "sha256": sha, "bytes": sum(r[1] for r in ranges), "tensors": tensors,
                        "pieces": [[a, n, h] for (a, n), h in zip(cuts, piece_sha)]})
        return out

    chunks = chunks_for("embed", None, model.embed_tensors())
    for i in range(model.n_layers):
        chunks += chunks_for(f"layer.{i}", i, model.layer_tensors(i))
    chunks += chunks_for("head", None, model.head_tensors())
    tok = {n: file_entries[n]["url"] for n in TOKENIZER_FILES if n in file_entries}
    return {
        "version": MANIFEST_VERSION,
        "name": name,
        "architecture": model.arch,
        "kind": model.kind,
        "tied_embeddings": model.tied_embeddings,
        "config": model.config,
        "n_layers": model.n_layers,
        "dtype": dtype,
        "hidden": model.hidden,
        "vocab": model.vocab,
        "max_context": model.max_context,
        "eos_ids": list(eos_ids(model_dir, model)),   # config + generation_config: what the server stops on
        "bos_id": model.bos_id,
        "files": file_entries,
        "tokenizer": tok,
        "chunks": chunks,
        "_stamp": stamp,
    }


def get_manifest(name: str, model_dir: Path, dtype: str = "f32") -> dict:
    """The manifest, from the on-disk cache while every file's size and mtime are unchanged."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    model_dir = Path(model_dir)
    with _locks_guard:
        lock = _locks.setdefault((str(model_dir), dtype), threading.Lock())
    with lock:
        cache = model_dir / f".pyapp-manifest-{dtype}.json"
        files = model_files(model_dir, dtype)
        stamp = _stamp(files)
        m = _memory.get((str(model_dir), dtype))
        if m is not None and m["_stamp"] == stamp and m["name"] == name:
            return m
        try:
            m = json.loads(cache.read_text())
            if m.get("_stamp") == stamp and m.get("version") == MANIFEST_VERSION and m.get("name") == name:
                _memory[(str(model_dir), dtype)] = m
                return m
        except (OSError, ValueError):
            pass
        m = build_manifest(name, model_dir, dtype)
        try:
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(m))
            os.replace(tmp, cache)
        except OSError:
            pass  # read-only store: recompute next start
        _memory[(str(model_dir), dtype)] = m
        return m


def public(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if not k.startswith("_")}
