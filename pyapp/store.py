"""The local model store.

Standard library only: this module is imported by the server, the CLI and, inside the
browser, by Pyodide, so nothing heavier than ``json``/``pathlib`` may be imported here.

Layout (see docs/models.md)::

    <models_dir()>/
        <name>/
            config.json             HF-style config (model_type, sizes, special ids)
            model.safetensors       float32 weights, HF tensor names
            model.f16.safetensors   optional, same names, float16
            model.q4_1.safetensors  GGUF sources only: the original quantized blocks
            tokenizer.json, tokenizer_config.json, generation_config.json
            pyapp.json              {"source", "converted_at", "dtypes", "sha256", ...}
        .tmp-<name>-<pid>/          a conversion in progress (never read)

A model folder only ever appears by an atomic rename of a finished temporary folder,
so anything named without a leading dot is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from .formats import FILE_TAGS, weight_file_name
from .errors import ConversionError, PyappError, UnsupportedArchitecture  # re-exported

__all__ = [
    "PyappError",
    "ModelNotFound",
    "ConversionError",
    "UnsupportedArchitecture",
    "models_dir",
    "model_path",
    "list_models",
    "model_info",
    "atomic_model_dir",
    "validate_name",
    "WEIGHT_FILES",
    "META_FILE",
]

META_FILE = "pyapp.json"
# weight file tag -> file name inside a model folder (the tags are pyapp.formats.FILE_TAGS)
WEIGHT_FILES = {tag: weight_file_name(tag) for tag in FILE_TAGS}
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelNotFound(PyappError):
    def __init__(self, name: str, available: list[str] | None = None):
        self.name = name
        if available is None:
            available = [m["name"] for m in list_models()]
        self.available = available
        have = ", ".join(available) if available else "none"
        super().__init__(
            f"model {name!r} is not in the store {models_dir()} (available: {have}); "
            f"try `pyapp pull <name>` or `pyapp import <path>`"
        )




def models_dir() -> Path:
    """The store root: ``$PYAPP_MODELS_DIR``, else ``~/.cache/pyapp/models``. Not created here."""
    env = os.environ.get("PYAPP_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pyapp" / "models"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise PyappError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )
    return name


def _is_model_dir(p: Path) -> bool:
    return (
        p.is_dir()
        and not p.name.startswith(".")
        and (p / "config.json").is_file()
    )


def model_path(name: str) -> Path:
    """The folder of a stored model; raises :class:`ModelNotFound` (listing what is there)."""
    root = models_dir()
    if isinstance(name, str) and _NAME_RE.match(name):
        p = root / name
        if _is_model_dir(p):
            return p
    raise ModelNotFound(name)


def _read_json(p: Path) -> dict:
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def model_info(path: Path) -> dict:
    """Summary of one model folder: name, architecture, size (bytes), dtypes, path, source."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    meta = _read_json(path / META_FILE)
    dtypes = [d for d, fn in WEIGHT_FILES.items() if (path / fn).is_file()]
    size = 0
    for f in path.rglob("*"):
        try:
            if f.is_file():
                size += f.stat().st_size
        except OSError:
            pass
    return {
        "name": path.name,
        "architecture": cfg.get("model_type", "unknown"),
        "architectures": cfg.get("architectures", []),
        "size": size,
        "dtypes": dtypes,
        "path": str(path),
        "source": meta.get("source"),
        "converted_at": meta.get("converted_at"),
        "synthetic": bool(meta.get("synthetic")),   # random weights (`pyapp synth`)
    }


def list_models() -> list[dict]:
    """Every complete model in the store, sorted by name (temporary folders are skipped)."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if _is_model_dir(p):
            out.append(model_info(p))
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if not hasattr(os, "kill"):  # e.g. Pyodide: cannot tell, so keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clean_stale(root: Path) -> None:
    """Remove temp/old folders left by processes that died (kill -9, power loss)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for p in entries:
        if not (p.name.startswith(_TMP_PREFIX) or p.name.startswith(_OLD_PREFIX)) or not p.is_dir():
            continue
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_model_dir(name: str):
    """Yield an empty temporary folder inside the store; on success it becomes ``<store>/<name>``.

    The temporary folder is ``<store>/.tmp-<name>-<pid>`` (same file system, so the final step is
    a rename). On any exception (KeyboardInterrupt included) it is deleted and the exception
    propagates; an existing model of that name is untouched. On success an existing model of that
    name is replaced: it is first renamed aside, then the new folder is renamed in, then the old
    one is deleted.
    """
    validate_name(name)
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    pid = os.getpid()
    tmp = root / f"{_TMP_PREFIX}{name}-{pid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        final = root / name
        old = None
        if final.exists() or final.is_symlink():
            old = root / f"{_OLD_PREFIX}{name}-{pid}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
