"""Put what the browser needs under web/ (gitignored): Pyodide, the tokenizer and jinja ES
modules, the micropip and pyapp wheels.

    python3 -m server.assets [--root DIR] [--no-wheel] [--force]

``ensure_assets()`` is what ``pyapp serve`` calls at start; it only redoes stale pieces:

    node_modules/pyodide/{pyodide.mjs, pyodide.js, pyodide.asm.mjs, pyodide.asm.wasm,
                          python_stdlib.zip, pyodide-lock.json}      -> web/vendor/pyodide/
    node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs    -> web/vendor/tokenizers.min.mjs
    node_modules/@huggingface/jinja/dist/index.js                   -> web/vendor/jinja/index.js
    micropip (pip download, the version pyodide-lock.json names)    -> web/wheels/ (and, when its
                                                                       sha256 matches the lock, next
                                                                       to Pyodide for loadPackage)
    pyapp (pip wheel ., rebuilt when pyapp/ is newer)                -> web/wheels/
    web/wheels/index.json  {"pyapp": file, "micropip": file, "wheels": {file: {size, sha256}}}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYODIDE_FILES = ("pyodide.mjs", "pyodide.js", "pyodide.asm.mjs", "pyodide.asm.wasm",
                 "python_stdlib.zip", "pyodide-lock.json")
COPIES = {
    "@huggingface/tokenizers/dist/tokenizers.min.mjs": "tokenizers.min.mjs",
    "@huggingface/jinja/dist/index.js": "jinja/index.js",
    "js-sha256/src/sha256.js": "js-sha256/sha256.js",   # the edge's SHA-256 without crypto.subtle
}


class AssetError(RuntimeError):
    pass


def _log_default(msg):
    print(f"[assets] {msg}", file=sys.stderr, flush=True)


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _copy_if_stale(src: Path, dst: Path) -> bool:
    if not src.is_file():
        raise AssetError(f"missing {src} (run `npm install` in {ROOT})")
    if dst.is_file():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) <= int(d.st_mtime):
            return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def npm_install(root: Path, log=_log_default):
    nm = root / "node_modules"
    pkg = root / "package.json"
    lock = nm / ".package-lock.json"
    if (nm / "pyodide").is_dir() and (nm / "@huggingface" / "tokenizers").is_dir() \
            and (nm / "@huggingface" / "jinja").is_dir() and not (lock.exists() and pkg.stat().st_mtime > lock.stat().st_mtime):
        return False
    if shutil.which("npm") is None:
        raise AssetError("npm is not installed: apt-get install npm, then retry")
    log("npm install (Pyodide, @huggingface/tokenizers, @huggingface/jinja) ...")
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root)
    if r.returncode:
        raise AssetError("npm install failed")
    return True


def _newest_source(root: Path) -> float:
    newest = (root / "pyproject.toml").stat().st_mtime
    for pattern in ("pyapp/**/*.py", "pyapp/**/*.wgsl", "pyapp/**/*.js"):
        for p in root.glob(pattern):
            newest = max(newest, p.stat().st_mtime)
    return newest


def build_pyapp_wheel(root: Path, wheels: Path, log=_log_default, force=False) -> Path:
    have = sorted(wheels.glob("pyapp-*.whl"))
    if have and not force and have[-1].stat().st_mtime >= _newest_source(root):
        return have[-1]
    log("building the pyapp wheel ...")
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", str(root), "-w", tmp], cwd=root, capture_output=True, text=True)
        if r.returncode:
            raise AssetError(f"pip wheel failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        built = sorted(Path(tmp).glob("pyapp-*.whl"))
        if not built:
            raise AssetError("pip wheel produced no pyapp wheel")
        for old in have:
            old.unlink(missing_ok=True)
        dst = wheels / built[-1].name
        os.replace(built[-1], dst)
    return dst


def fetch_micropip(root: Path, wheels: Path, vendor: Path, log=_log_default) -> Path | None:
    lock = json.loads((vendor / "pyodide" / "pyodide-lock.json").read_text())
    entry = lock.get("packages", {}).get("micropip", {})
    version = entry.get("version")
    have = sorted(wheels.glob("micropip-*.whl"))
    want = [p for p in have if version is None or p.name.startswith(f"micropip-{version}-")]
    if want:
        whl = want[-1]
    else:
        log(f"pip download micropip{'==' + version if version else ''} ...")
        spec = f"micropip=={version}" if version else "micropip"
        pyver = ".".join(str(lock.get("info", {}).get("python", "3.12")).split(".")[:2])
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec,
                            "--python-version", pyver, "--only-binary=:all:", "-d", str(wheels)],
                           capture_output=True, text=True)
        if r.returncode:
            log(f"warning: could not download micropip ({r.stderr.strip()[-300:]})")
            return have[-1] if have else None
        got = sorted(wheels.glob(f"micropip-{version or ''}*.whl"))
        if not got:
            return None
        whl = got[-1]
    # Pyodide's own loadPackage("micropip") looks next to pyodide.asm.wasm and checks the lock's hash.
    if entry.get("file_name") and entry.get("sha256") == _sha256(whl):
        _copy_if_stale(whl, vendor / "pyodide" / entry["file_name"])
    return whl


def ensure_assets(root: str | Path = ROOT, *, wheels: bool = True, log=_log_default,
                  force: bool = False) -> dict:
    root = Path(root)
    web = root / "web"
    vendor, wdir = web / "vendor", web / "wheels"
    vendor.mkdir(parents=True, exist_ok=True)
    wdir.mkdir(parents=True, exist_ok=True)
    npm_install(root, log)
    nm = root / "node_modules"
    n = 0
    for f in PYODIDE_FILES:
        n += _copy_if_stale(nm / "pyodide" / f, vendor / "pyodide" / f)
    for src, dst in COPIES.items():
        n += _copy_if_stale(nm / src, vendor / dst)
    if n:
        log(f"copied {n} file(s) into {vendor}")
    out = {"vendor": str(vendor)}
    if wheels:
        pyapp_whl = build_pyapp_wheel(root, wdir, log, force)
        micropip = fetch_micropip(root, wdir, vendor, log)
        index = {"pyapp": pyapp_whl.name, "micropip": micropip.name if micropip else None,
                 "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wheels": {}}
        for w in sorted(wdir.glob("*.whl")):
            index["wheels"][w.name] = {"url": f"/wheels/{w.name}", "size": w.stat().st_size,
                                       "sha256": _sha256(w)}
        old = {}
        try:
            old = json.loads((wdir / "index.json").read_text())
        except (OSError, ValueError):
            pass
        if {k: v for k, v in old.items() if k != "built"} != {k: v for k, v in index.items() if k != "built"}:
            (wdir / "index.json").write_text(json.dumps(index, indent=1))
        out.update(index)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m server.assets", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(ROOT))
    p.add_argument("--no-wheel", action="store_true", help="skip the micropip/pyapp wheels")
    p.add_argument("--force", action="store_true", help="rebuild the pyapp wheel")
    a = p.parse_args(argv)
    try:
        out = ensure_assets(a.root, wheels=not a.no_wheel, force=a.force)
    except AssetError as e:
        print(f"server.assets: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in out.items() if k != "wheels"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
