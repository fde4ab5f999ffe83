"""``pyapp build-site OUT_DIR [--model NAME ...] [--format TAG]``: the site as plain files.

``--format``: any served weight format (f32, f16, q4_1, q8_0, q4_k_m); a model without that
weight file is included in f32 (a static site has one format per model: the page shows it).

Any static host serves the result (GitHub Pages, S3, nginx, ``python3 -m http.server``); no
Range support, no server code, no /v1 API:

    index.html boot.js offline.js app.js sw.js style.css manifest.webmanifest
    vendor/...                       Pyodide, Tokenizers.js, jinja (what a boot loads)
    wheels/index.json                the pyapp wheel's name and sha256, the precache list and
                                     ``site: {static: true, models: [...]}`` (the page reads it)
    wheels/pyapp-<ver>+s<hash>-py3-none-any.whl
    models/<name>/manifest.json      the server's schema, one file per chunk (edge/offline.py)
    models/<name>/<sha16>/<file>     tokenizer, configs, and <chunk id>.bin per weight chunk

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

APP_FILES = ("index.html", "boot.js", "offline.js", "app.js", "sw.js", "style.css", "manifest.webmanifest")
DEFAULT_MODELS = ("smollm2-135m", "minilm-l6")


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


def build_model(out: Path, name: str, dtype: str, log=print) -> dict:
    """models/<name>/: the chunked manifest and every file it names.  Returns a summary."""
    from server.manifest import get_manifest, public

    d = model_path(name)
    full = public(get_manifest(name, d, dtype))
    m = chunked_manifest(full)
    src_of = {c["id"]: c for c in full["chunks"]}
    written = 0
    for c in m["chunks"]:
        rel = m["files"][c["file"]]["url"].lstrip("/")
        s = src_of[c["id"]]
        written += _write_chunk(d / s["file"], s["ranges"], out / rel, c["sha256"])
    for fname, e in m["files"].items():
        if not fname.endswith(".bin"):
            _copy(d / fname, out / e["url"].lstrip("/"))
    mdir = out / "models" / name
    (mdir / "manifest.json").write_text(json.dumps(m))
    sizes = [int(e["size"]) for e in m["files"].values()]
    log(f"  {name} ({dtype}): {len(m['chunks'])} chunk files ({written} written), "
        f"{sum(sizes) / 1e6:.1f} MB, largest {max(sizes) / 1e6:.1f} MB")
    return {"id": name, "object": "model", "pyapp": {"n_layers": m["n_layers"], "kind": m["kind"],
            "architecture": m["architecture"], "dtype": dtype, "bytes": sum(sizes),
            "files": len(sizes)}}


def model_format(name: str, dtype: str) -> str:
    """``dtype`` where the model has that weight file, else f32 (every model has f32)."""
    return dtype if (model_path(name) / weight_file_name(check_tag(dtype))).is_file() else "f32"


def build_site(out_dir: str | Path, models=DEFAULT_MODELS, dtype: str = "f32", log=print) -> Path:
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
    entries = [build_model(out, name, model_format(name, dtype), log) for name in models]
    index = assets.wheel_index(out / "wheels", wheel, None, info["precache"])
    index["site"] = {"static": True, "models": entries}
    (out / "wheels" / "index.json").write_text(json.dumps(index, indent=1))
    log(f"done: serve {out} as plain files, e.g. `python3 -m http.server -d {out}`")
    return out
