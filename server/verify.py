"""Model files checked against the sha256 recorded when they were imported (``pyapp.json``).

At start every recorded file's size is checked (a truncated or missing file stops the server with
one line); the hashes are then computed in a background thread, with progress for large files.
Whoever needs a file (a file or manifest route, the server's own layers) waits for its check and
gets ``ApiError(503)`` naming the file if it failed. A file whose size, mtime, ctime or inode
changes is checked again before its next use (rewriting a byte and restoring the mtime still
moves the ctime), so corrupt bytes are never served under the recorded content address and the
server never computes on weights the browser would refuse.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from pyapp.store import META_FILE, PyappError

from .runtime import ApiError

PROGRESS_BYTES = 64 << 20    # files at least this large log their progress
_log = logging.getLogger("pyapp.server")


class WeightsError(PyappError):
    """A recorded model file is missing, truncated or unreadable (raised at start)."""


def _stamp(path: Path):
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class FileCheck:
    def __init__(self, path: Path, sha256: str, size: int | None):
        self.path = path
        self.sha256 = sha256
        self.size = size
        self.stamp = None            # the stamp the last check saw
        self.error: str | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()


class Verifier:
    """The recorded files of one model folder and the result of checking each."""

    def __init__(self, name: str, model_dir: Path, log: Callable[[str], None] | None = None):
        self.name = name
        self.dir = Path(model_dir)
        self.log = log or _log.warning
        self.files: dict[str, FileCheck] = {}
        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            return
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"model {name}: {META_FILE} is unreadable ({e})")
        sizes = meta.get("sizes") or {}
        for rel, sha in (meta.get("sha256") or {}).items():
            self.files[rel] = FileCheck(self.dir / rel, sha, sizes.get(rel))

    @property
    def recorded(self) -> bool:
        return bool(self.files)

    # ------------------------------------------------------------------ checks
    def check_sizes(self) -> None:
        """Fast, at start: every recorded file exists, is readable and has its recorded size."""
        for rel, fc in self.files.items():
            try:
                size = os.stat(fc.path).st_size
                with open(fc.path, "rb"):
                    pass
            except OSError as e:
                raise WeightsError(f"model {self.name}: {rel} cannot be read "
                                   f"({e.strerror or e}); re-import the model")
            if fc.size is not None and size != fc.size:
                raise WeightsError(f"model {self.name}: {rel} is {size} bytes but was {fc.size} "
                                   f"when imported ({'truncated' if size < fc.size else 'grown'}); "
                                   "re-import the model")

    def _hash(self, rel: str, fc: FileCheck) -> None:
        """Hash ``fc``'s file now and record the verdict (call with ``fc.lock`` held)."""
        total = 0
        try:
            stamp = _stamp(fc.path)
            total = stamp[0]
            h = hashlib.sha256()
            seen, next_report = 0, total // 4
            with open(fc.path, "rb") as f:
                while b := f.read(1 << 22):
                    h.update(b)
                    seen += len(b)
                    if total >= PROGRESS_BYTES and seen >= next_report and seen < total:
                        self.log(f"model {self.name}: verifying {rel}: {100 * seen // total}% "
                                 f"of {total >> 20} MB")
                        next_report += total // 4
            got = h.hexdigest()
            if fc.size is not None and total != fc.size:
                fc.error = f"{rel} is {total} bytes, {fc.size} were recorded"
            elif got != fc.sha256:
                fc.error = f"{rel} does not match its recorded sha256 ({fc.sha256[:12]}…, now {got[:12]}…)"
            else:
                fc.error = None
            fc.stamp = stamp
        except OSError as e:
            fc.error, fc.stamp = f"{rel} cannot be read ({e.strerror or e})", None
        if fc.error:
            self.log(f"model {self.name}: {fc.error}; its routes answer 503 until it is restored")
        elif total >= PROGRESS_BYTES:
            self.log(f"model {self.name}: {rel} verified ({total >> 20} MB)")
        fc.done.set()

    def verify_all(self) -> None:
        """Hash every recorded file (the background thread's work), smallest first."""
        for rel, fc in sorted(self.files.items(), key=lambda kv: kv[1].size or 0):
            with fc.lock:
                if not fc.done.is_set():
                    self._hash(rel, fc)

    def start(self) -> threading.Thread | None:
        if not self.files:
            return None
        t = threading.Thread(target=self.verify_all, name=f"verify-{self.name}", daemon=True)
        t.start()
        return t

    def require(self, rel: str) -> None:
        """Blocking (call from a worker thread): ApiError(503) unless ``rel`` passed its check.
        Files without a recorded hash pass; a file changed since its check is checked again."""
        fc = self.files.get(rel)
        if fc is None:
            return
        fc.done.wait()
        try:
            changed = _stamp(fc.path) != fc.stamp
        except OSError:
            changed = True
        if changed:
            with fc.lock:
                try:
                    changed = _stamp(fc.path) != fc.stamp
                except OSError:
                    changed = True
                if changed:
                    self._hash(rel, fc)
        if fc.error:
            raise ApiError(503, f"model {self.name!r} is unavailable: {fc.error}", "server_error")

    def sha256(self, rel: str) -> str | None:
        """The recorded digest of ``rel`` (valid once ``require(rel)`` has passed)."""
        fc = self.files.get(rel)
        return fc.sha256 if fc is not None else None

    def require_all(self, names) -> None:
        for n in names:
            self.require(n)

    def status(self) -> dict:
        return {rel: ("pending" if not fc.done.is_set() else ("failed" if fc.error else "ok"))
                for rel, fc in self.files.items()}
