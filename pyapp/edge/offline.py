"""One file per weight chunk: the manifest layout a static host and the offline cache use.

The server's manifest points each chunk at byte ranges of a whole ``.safetensors`` file, fetched
with HTTP Range.  :func:`chunked_manifest` rewrites it (same schema, docs/server.md) so that every
chunk is its own content-addressed file ``/models/<name>/<sha256[:16]>/<chunk id>.bin`` holding
exactly the chunk's bytes (its ranges concatenated, which is what the chunk's sha256 covers);
a chunk the manifest hashes in several pieces (a table or a layer over 16 MiB) becomes one file
per piece, ``<chunk id>.part<k>.bin`` under the piece's sha256, so no file exceeds a piece.
A chunk then downloads with one plain GET, no Range support needed, and the Cache API can hold
it whole.  Chunks whose tensors another chunk already holds (a tied embedding, which SmolLM2's
``head`` carries) are dropped.

Used by ``pyapp build-site`` (CPython, pyapp/site.py) and by "Save for offline" under
``pyapp serve`` (Pyodide, web/offline.js): stdlib only.

For Python in the page, :func:`save_offline`, :func:`offline_status` and :func:`remove_offline`
are the console's ``pyapp.saveOffline`` / ``offlineStatus`` / ``removeOffline`` (web/offline.js
does the work: the bytes never enter the wasm heap).
"""
from __future__ import annotations

import json

from .stream import chunk_pieces, select_chunks, tensor_slices


def chunk_file_name(chunk: dict, part: int | None = None) -> str:
    return f"{chunk['id']}.bin" if part is None else f"{chunk['id']}.part{part}.bin"


def chunk_url(name: str, chunk: dict, part: int | None = None) -> str:
    sha = chunk["sha256"] if part is None else chunk["pieces"][part][2]
    return f"/models/{name}/{sha[:16]}/{chunk_file_name(chunk, part)}"


def chunked_manifest(manifest: dict, with_source: bool = False) -> dict:
    """``manifest`` with one file per chunk, or one file per piece for a chunk the manifest hashes
    in several pieces (each <= 16 MiB, server/manifest.py), so no file is larger than a piece and
    a static host's per-file cap holds.  A split chunk has ``file: None`` and names each piece's
    file as the piece's fourth field (``[start, bytes, sha256, file]``); its ``ranges`` and tensor
    offsets are over the pieces concatenated.  ``with_source`` adds ``sources: {file: {url,
    ranges}}``, where each file's bytes are in the original manifest, for a client that builds the
    files itself from Range requests."""
    name = manifest["name"]
    every = {t["name"] for c in manifest["chunks"] for t in c["tensors"]}
    chunks, _owner = select_chunks(manifest, needed=every)
    weight_files = {c["file"] for c in manifest["chunks"]}
    files = {k: v for k, v in manifest["files"].items() if k not in weight_files}
    out = []
    for c in chunks:
        at = {n: dst for n, dst, _len in tensor_slices(c)}
        src_url = manifest["files"][c["file"]]["url"]
        new = dict(c, ranges=[[0, int(c["bytes"])]],
                   tensors=[dict(t, offset=at[t["name"]]) for t in c["tensors"]])
        pieces = chunk_pieces(c)
        if len(pieces) == 1:
            fname = chunk_file_name(c)
            files[fname] = {"url": chunk_url(name, c), "size": int(c["bytes"]), "sha256": c["sha256"]}
            new.update(file=fname)
            sources = {fname: c["ranges"]}
        else:
            new.update(file=None, pieces=[])
            sources = {}
            for k, (p, (a, n, sha)) in enumerate(zip(pieces, c["pieces"])):
                fname = chunk_file_name(c, k)
                files[fname] = {"url": chunk_url(name, c, k), "size": int(n), "sha256": sha}
                new["pieces"].append([a, n, sha, fname])
                sources[fname] = p["ranges"]
        if with_source:
            new["sources"] = {f: {"url": src_url, "ranges": r} for f, r in sources.items()}
        out.append(new)
    return dict(manifest, files=files, chunks=out, layout="chunk-files")


def chunked_manifest_json(text: str) -> str:
    """JSON in, JSON out: what web/offline.js calls (one FFI crossing, no proxies kept)."""
    return json.dumps(chunked_manifest(json.loads(text), with_source=True))


async def save_offline(model: str, format: str | None = None) -> dict:
    """Store every file of ``model`` (``format``: f32/f16, default the site's) for offline use."""
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import to_js  # type: ignore[import-not-found]
    opts = to_js({"format": format} if format else {}, dict_converter=js.Object.fromEntries)
    return (await js.pyapp.saveOffline(model, opts)).to_py()


async def offline_status() -> dict:
    """``{models: {name: {bytes, total, complete, ...}}, usage, quota, persisted}``."""
    import js  # type: ignore[import-not-found]
    return (await js.pyapp.offlineStatus()).to_py()


async def remove_offline(model: str) -> dict:
    import js  # type: ignore[import-not-found]
    return (await js.pyapp.removeOffline(model)).to_py()
