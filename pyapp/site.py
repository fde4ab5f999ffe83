"""``pyapp build-site OUT_DIR [--model NAME ...] [--format TAG] [--max-file-size SIZE]``: the
site as plain files.

``--format``: any served weight format (f32, f16, q4_1, q8_0, q4_k_m); default, and for a model
without the one named: the model's default, the smallest format it has (what the edge's
``generate`` runs when no format is named: SmolLM2 q4_1, Gemma 3 q4_k_m, MiniLM f32).  A static
site has one format per model: the page shows it.

``--max-file-size`` (default 16 MiB, at most 16 MiB): no file of the site is larger, so hosts
with a per-file cap serve it (Cloudflare Pages 25 MiB, GitHub Pages 100 MB).  A weight chunk
over it is one file per manifest piece (``<id>.part<k>.bin``, pyapp/edge/offline.py); a
tokenizer file over it is split into parts the edge joins (Gemma's 33 MB tokenizer.json).

Any static host serves the result (GitHub Pages, S3, nginx, ``python3 -m http.server``); no
Range support, no server code, no /v1 API:

    index.html boot.js offline.js app.js sw.js style.css manifest.webmanifest
    vendor/...                       Pyodide, Tokenizers.js, jinja (what a boot loads)
    wheels/index.json                the pyapp wheel's name and sha256, the precache list and
                                     ``site: {static: true, models: [...]}`` (the page reads it)
    wheels/pyapp-<ver>+s<hash>-py3-none-any.whl
    models/<name>/manifest.json      the server's schema, one file per chunk (edge/offline.py)
    models/<name>/<sha16>/<file>     tokenizer, configs, <chunk id>.bin per weight chunk
                                     (<chunk id>.part<k>.bin per piece of a big one)

With no server every layer runs on the edge (split 0), so the page needs WebGPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .edge.offline import chunked_manifest
from .formats import check_tag, weight_file_name
from .store import PyappError, model_path
from .weightfile import default_format

APP_FILES = ("index.html", "boot.js", "offline.js", "app.js", "sw.js", "style.css", "manifest.webmanifest")
DEFAULT_MODELS = ("smollm2-135m", "minilm-l6")
# no file of the site is larger: under every common static host's per-file cap (Cloudflare Pages
# 25 MiB, GitHub Pages 100 MB) and equal to the manifest's piece (server/manifest.py PIECE_BYTES),
# so a weight file is one piece the edge verifies and uploads alone
MAX_FILE_SIZE = 16 << 20


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    shutil.copy2(src, dst)


def _write_chunk(src: Path, ranges: list, dst: Path, sha256: str) -> bool:
    """The chunk's bytes (its ranges of ``src``, concatenated) into ``dst``, checked against the
    manifest's sha256.  Returns False when ``dst`` was already there (content-addressed)."""
    size = sum(int(n) for _o, n in ranges)
    if dst.is_file() and dst.stat().st_size == size:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as f, open(tmp, "wb") as out:
        for off, n in ranges:
            f.seek(off)
            left = int(n)
            while left > 0:
                b = f.read(min(left, 1 << 22))
                if not b:
                    raise PyappError(f"{src} is shorter than its manifest says")
                h.update(b)
                out.write(b)
                left -= len(b)
    if h.hexdigest() != sha256:
        tmp.unlink()
        raise PyappError(f"{src.name} changed while building {dst.name}: rerun build-site")
    os.replace(tmp, dst)
    return True


def _split_file(src: Path, out: Path, name: str, fname: str, cap: int) -> list:
    """``src`` (a tokenizer file over the cap) as parts of at most ``cap`` bytes, each its own
    content-addressed file: [(part name, files entry)]."""
    from server.manifest import file_url
    data = src.read_bytes()
    parts = []
    for k, a in enumerate(range(0, len(data), cap)):
        b = data[a:a + cap]
        sha = hashlib.sha256(b).hexdigest()
        pname = f"{fname}.part{k}"
        e = {"url": file_url(name, pname, sha), "size": len(b), "sha256": sha}
        dst = out / e["url"].lstrip("/")
        if not (dst.is_file() and dst.stat().st_size == len(b)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(b)
        parts.append((pname, e))
    return parts


def build_model(out: Path, name: str, dtype: str, max_file_size: int = MAX_FILE_SIZE, log=print) -> dict:
    """models/<name>/: the chunked manifest and every file it names, none over ``max_file_size``
    bytes.  Returns a summary."""
    from server.manifest import PIECE_BYTES, get_manifest, public, repiece

    d = model_path(name)
    full = public(get_manifest(name, d, dtype))
    if max_file_size < PIECE_BYTES:      # pieces (and so files) smaller than the server's
        full["chunks"] = [c if all(p[1] <= max_file_size for p in c["pieces"])
                          else repiece(c, d / c["file"], max_file_size) for c in full["chunks"]]
    m = chunked_manifest(full, with_source=True)
    written = 0
    for c in m["chunks"]:
        for fname, src in c.pop("sources").items():
            e = m["files"][fname]
            written += _write_chunk(d / _source_file(full, src["url"]), src["ranges"],
                                    out / e["url"].lstrip("/"), e["sha256"])
    weights = {f for c in m["chunks"] for f in ([c["file"]] if c["file"] else [p[3] for p in c["pieces"]])}
    for fname, e in list(m["files"].items()):
        if fname in weights:
            continue
        if e["size"] <= max_file_size:
            _copy(d / fname, out / e["url"].lstrip("/"))
            continue
        users = [k for k, u in m["tokenizer"].items() if u == e["url"]]
        if not users:
            raise PyappError(f"{name}/{fname} is {e['size']} bytes, over --max-file-size {max_file_size}, "
                             "and only weights and tokenizer files can be split")
        parts = _split_file(d / fname, out, name, fname, max_file_size)
        del m["files"][fname]
        m["files"].update(parts)
        for k in users:                  # the edge fetches the parts and joins them (stream.fetch_doc)
            m["tokenizer"][k] = [e2["url"] for _p, e2 in parts]
    mdir = out / "models" / name
    (mdir / "manifest.json").write_text(json.dumps(m))
    sizes = [int(e["size"]) for e in m["files"].values()]
    if max(sizes) > max_file_size:       # a bug, not bad input: every file above was cut to fit
        raise PyappError(f"{name}: a file of {max(sizes)} bytes is over --max-file-size {max_file_size}")
    log(f"  {name} ({dtype}): {len(sizes)} files ({written} weight files written), "
        f"{sum(sizes) / 1e6:.1f} MB, largest {max(sizes) / 1e6:.1f} MB")
    return {"id": name, "object": "model", "pyapp": {"n_layers": m["n_layers"], "kind": m["kind"],
            "architecture": m["architecture"], "dtype": dtype, "bytes": sum(sizes),
            "files": len(sizes)}}


def _source_file(manifest: dict, url: str) -> str:
    return next(f for f, e in manifest["files"].items() if e["url"] == url)


def model_format(name: str, dtype: str | None = None) -> str:
    """``dtype`` where the model has that weight file; else (or with None) the model's default,
    the smallest format it has (what the edge runs when no format is named)."""
    d = model_path(name)
    if dtype is not None and (d / weight_file_name(check_tag(dtype))).is_file():
        return dtype
    return default_format(d)


def parse_size(text) -> int:
    """Bytes from ``16MiB``, ``25MB``, ``512KiB`` or a plain number of bytes."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 16MiB, 25MB, 4000000)")
    unit = (m.group(2) or "").upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30}[unit]
    return int(float(m.group(1)) * mult)


def build_site(out_dir: str | Path, models=DEFAULT_MODELS, dtype: str | None = None,
               max_file_size: int = MAX_FILE_SIZE, log=print) -> Path:
    """The site in ``out_dir``; ``dtype`` None: each model in its default (smallest) format."""
    from server.manifest import PIECE_BYTES
    if not 4096 <= max_file_size <= PIECE_BYTES:
        raise PyappError(f"--max-file-size must be between 4 KiB and {PIECE_BYTES >> 20} MiB (the "
                         f"manifest's piece, the most the edge verifies at once), not {max_file_size}")
    from server import assets

    out = Path(out_dir).resolve()
    web = assets.ROOT / "web"
    info = assets.ensure_assets(assets.ROOT, log=lambda m: log(f"assets: {m}"))
    out.mkdir(parents=True, exist_ok=True)
    for f in APP_FILES:
        _copy(web / f, out / f)
    for rel in info["precache"]:
        _copy(web / rel, out / rel)
    wheel = web / "wheels" / info["pyapp"]
    _copy(wheel, out / "wheels" / wheel.name)
    for old in (out / "wheels").glob("pyapp-*.whl"):
        if old.name != wheel.name:
            old.unlink()
    log(f"building {out} ...")
    entries = [build_model(out, name, model_format(name, dtype), max_file_size, log) for name in models]
    index = assets.wheel_index(out / "wheels", wheel, None, info["precache"])
    index["site"] = {"static": True, "models": entries}
    (out / "wheels" / "index.json").write_text(json.dumps(index, indent=1))
    log(f"done: serve {out} as plain files, e.g. `python3 -m http.server -d {out}`")
    return out
