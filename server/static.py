"""Files from disk with HTTP range/conditional semantics, and safe path resolution.

A file is streamed in chunks from disk (never read whole into memory).  Supported:
``Accept-Ranges: bytes``; one ``Range`` (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) -> 206 with
``Content-Range``; an unsatisfiable range -> 416 with ``Content-Range: bytes */size``; several
ranges -> the whole file (200, allowed by RFC 9110); ``ETag`` + ``If-None-Match`` -> 304;
``If-Range`` (an ETag) -> the range only while the ETag still matches; ``HEAD``.
"""
from __future__ import annotations

import json
import mimetypes
import os
import stat
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import Response

CHUNK = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

MIME = {
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".safetensors": "application/octet-stream",
    ".wgsl": "text/plain; charset=utf-8",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def media_type(path: str | Path) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    return MIME.get(ext) or mimetypes.guess_type(str(path))[0] or "application/octet-stream"


def safe_join(root: str | Path, relpath: str) -> Path | None:
    """``root/relpath`` if it names a regular file that really lies inside ``root``, else None.

    Refuses empty/absolute paths, backslashes, NUL, ``.``/``..`` segments, hidden segments, and
    anything whose resolved (symlink-free) path is outside the resolved root.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        return None
    parts = relpath.split("/")
    for p in parts:
        if p in ("", ".", "..") or p.startswith(".") or ":" in p:
            return None
    try:
        real_root = Path(os.path.realpath(root))
        target = Path(os.path.realpath(os.path.join(real_root, *parts)))
    except (OSError, ValueError):
        return None
    if os.path.commonpath([str(real_root), str(target)]) != str(real_root) or target == real_root:
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return target


def weak_etag(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def parse_range(header: str, size: int):
    """(start, end_inclusive) for one satisfiable range; "multi" for several; "bad" if unsatisfiable
    or malformed syntax we should answer 416 to; None if there is no usable Range header."""
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None  # unknown unit: ignore (RFC 9110 14.2)
    specs = [s.strip() for s in header[6:].split(",") if s.strip()]
    if not specs:
        return "bad"
    if len(specs) > 1:
        return "multi"
    spec = specs[0]
    if "-" not in spec:
        return "bad"
    a, b = spec.split("-", 1)
    a, b = a.strip(), b.strip()
    try:
        if a == "":
            n = int(b)
            if n <= 0 or size == 0:
                return "bad"
            return (max(0, size - n), size - 1)
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return "bad"
    if start < 0 or end < start:
        return "bad"
    if start >= size:
        return "bad"
    return (start, min(end, size - 1))


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    bare = etag[2:] if etag.startswith("W/") else etag
    return any((t[2:] if t.startswith("W/") else t) == bare for t in tags)


def _if_range_matches(header: str, etag: str) -> bool:
    """RFC 9110 13.1.5: If-Range compares strongly, so a weak tag (or a date) never matches."""
    h = header.strip()
    return not h.startswith("W/") and not etag.startswith("W/") and h == etag


class RangeFileResponse(Response):
    """Stream ``path`` (or a byte range of it) from disk."""

    def __init__(self, path, st, start, end, status_code, headers):
        super().__init__(content=b"", status_code=status_code, headers=headers)
        self.path = path
        self.start = start
        self.end = end  # exclusive

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if scope.get("method") == "HEAD" or self.end <= self.start:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        async with await anyio.open_file(self.path, "rb") as f:
            await f.seek(self.start)
            left = self.end - self.start
            while left > 0:
                chunk = await f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            if left > 0:  # file shrank under us: end the body (the client sees a short read)
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def file_response(request: Request, path: str | Path, *, etag: str | None = None,
                  cache_control: str = REVALIDATE, content_type: str | None = None,
                  extra_headers: dict | None = None) -> Response:
    """The response for GET/HEAD of a file on disk, honouring Range/If-Range/If-None-Match."""
    st = os.stat(path)
    size = st.st_size
    etag = etag or weak_etag(st)
    headers = {
        "accept-ranges": "bytes",
        "etag": etag,
        "cache-control": cache_control,
        "content-type": content_type or media_type(path),
    }
    if extra_headers:
        headers.update(extra_headers)
    if _etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers={k: v for k, v in headers.items()
                                                  if k != "content-type"})
    rng = parse_range(request.headers.get("range", ""), size)
    if_range = request.headers.get("if-range")
    if rng is not None and if_range is not None and not _if_range_matches(if_range, etag):
        rng = None  # the representation changed: send it whole
    if rng == "bad":
        body = json.dumps({"error": {"message": f"Range not satisfiable for a file of {size} bytes",
                                     "type": "invalid_request_error", "param": "range",
                                     "code": 416}}).encode()
        return Response(status_code=416, content=body, media_type="application/json", headers={
            "content-range": f"bytes */{size}", "accept-ranges": "bytes", "etag": etag})
    if rng is None or rng == "multi":
        headers["content-length"] = str(size)
        return RangeFileResponse(path, st, 0, size, 200, headers)
    start, end = rng
    headers["content-range"] = f"bytes {start}-{end}/{size}"
    headers["content-length"] = str(end - start + 1)
    return RangeFileResponse(path, st, start, end + 1, 206, headers)
