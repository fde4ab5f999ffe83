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
    pyapp (a pure-Python wheel written with zipfile, named by a hash   -> web/wheels/
           of its sources: pyapp-<version>+s<hash>-py3-none-any.whl)
    web/wheels/index.json  {"pyapp": file, "micropip": file, "wheels": {file: {size, sha256}},
                            "precache": [the vendored files a boot needs, for sw.js]}

A failure to build the pyapp wheel raises AssetError: ``pyapp serve`` then refuses to start,
since the page could not boot.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
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


def _site_wheel_files(root: Path) -> list[Path]:
    """What the site's pyapp wheel holds: the edge needs pyapp/ only (Python, WGSL kernels, the JS its FFI evaluates)."""
    files = [p for pat in ("pyapp/**/*.py", "pyapp/**/*.wgsl", "pyapp/**/*.js") for p in root.glob(pat)]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def _project_version(root: Path) -> str:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def _record_hash(data: bytes) -> str:
    import base64

    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_pyapp_wheel(root: Path, wheels: Path, log=_log_default, force=False) -> Path:
    """The pure-Python pyapp wheel, written with zipfile: no setuptools/wheel/pip involved, so it
    builds the same in any venv.  The local version label is a hash of the sources, so a changed
    pyapp gets a new file name (a browser's cache can never serve a stale wheel under it) and
    unchanged sources give a byte-identical wheel (fixed timestamps, sorted entries)."""
    import zipfile

    files = _site_wheel_files(root)
    if not files:
        raise AssetError(f"no pyapp sources under {root / 'pyapp'}")
    src = hashlib.sha256()
    for p in files:
        src.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    version = f"{_project_version(root)}+s{src.hexdigest()[:12]}"
    name = f"pyapp-{version}-py3-none-any.whl"
    dst = wheels / name
    if dst.is_file() and not force:
        return dst
    log(f"building {name} ...")
    info = f"pyapp-{version}.dist-info"
    entries = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]
    entries += [
        (f"{info}/METADATA", f"Metadata-Version: 2.1\nName: pyapp\nVersion: {version}\n".encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: server.assets\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
    ]
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    tmp = dst.with_name(dst.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in entries:
            zi = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, d)
    os.replace(tmp, dst)
    for old in wheels.glob("pyapp-*.whl"):
        if old != dst:
            old.unlink(missing_ok=True)
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
        index = wheel_index(wdir, pyapp_whl, micropip, precache_list(vendor, web))
        old = {}
        try:
            old = json.loads((wdir / "index.json").read_text())
        except (OSError, ValueError):
            pass
        if {k: v for k, v in old.items() if k != "built"} != {k: v for k, v in index.items() if k != "built"}:
            (wdir / "index.json").write_text(json.dumps(index, indent=1))
        out.update(index)
    return out


def precache_list(vendor: Path, web: Path) -> list[str]:
    """The vendored files a boot needs, relative to the site root: sw.js precaches them at install
    so that a second visit boots with the network off."""
    files = [vendor / "pyodide" / f for f in PYODIDE_FILES if f != "pyodide.js"]
    files += [vendor / dst for dst in COPIES.values()]
    return [p.relative_to(web).as_posix() for p in files if p.is_file()]


def wheel_index(wdir: Path, pyapp_whl: Path, micropip: Path | None, precache: list[str]) -> dict:
    """``wheels/index.json``: which wheel is pyapp's (a name relative to wheels/), every wheel's
    size and sha256 (the boot checks the pyapp wheel against it), and the precache list."""
    index = {"pyapp": pyapp_whl.name, "micropip": micropip.name if micropip else None,
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wheels": {},
             "precache": precache}
    for w in sorted(wdir.glob("*.whl")):
        index["wheels"][w.name] = {"url": f"/wheels/{w.name}", "size": w.stat().st_size,
                                   "sha256": _sha256(w)}
    return index


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
