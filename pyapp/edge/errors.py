"""The edge's one error shape: every failure a caller sees is one sentence with a ``code``.

Python raises :class:`EdgeError` (or anything else); :func:`describe` turns any exception,
including a JS ``Error`` that crossed the FFI with a ``code`` (``stream.js``, ``ws.js``), into
``{message, code, option, traceback}``; ``api.js`` throws that as a JS ``Error`` with the
traceback on a property, and the page shows the message.
"""
from __future__ import annotations

import traceback

from ..errors import PyappError

# code -> what it means (docs/edge.md lists them)
CODES = ("bad_option", "bad_input", "wrong_model", "too_long", "busy", "timeout", "network",
         "integrity", "server", "no_webgpu", "gpu", "too_big", "cancelled", "internal")


class EdgeError(PyappError):
    """A failure with a one-sentence message, a ``code`` from CODES and, for a bad option, its name."""

    def __init__(self, message: str, code: str = "bad_input", option: str | None = None):
        super().__init__(message)
        self.code = code
        self.option = option


def _js_error_fields(exc: BaseException) -> tuple[str | None, str | None]:
    """(code, message) of a JS Error that crossed the FFI as a JsException, else (None, None)."""
    err = getattr(exc, "js_error", exc)
    try:
        code = getattr(err, "code", None)
        msg = getattr(err, "message", None)
    except Exception:  # noqa: BLE001 - not a JS object
        return None, None
    return (str(code) if isinstance(code, str) else None), (str(msg) if isinstance(msg, str) else None)


def _sentence(text: str) -> str:
    """The first non-empty line, without a Python/JS type prefix a JsException adds."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    for prefix in ("Error: ", "TypeError: ", "pyodide.ffi.JsException: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return line or "unknown error"


def describe(exc: BaseException) -> dict:
    """``{message, code, option, traceback}`` for any exception (the message is one line)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, EdgeError):
        return {"message": _sentence(str(exc)), "code": exc.code, "option": exc.option, "traceback": tb}
    code, msg = _js_error_fields(exc)
    if code is not None or type(exc).__name__ == "JsException":
        return {"message": _sentence(msg or str(exc)), "code": code or "internal", "option": None,
                "traceback": tb}
    if isinstance(exc, TimeoutError):
        code = "timeout"
    elif isinstance(exc, (ValueError, TypeError, KeyError)):
        code = "bad_input"
    elif type(exc).__name__ == "GpuError":
        code = "gpu"
    else:
        code = "internal"
    text = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
    if code == "internal":
        text = f"{type(exc).__name__}: {_sentence(text)}"
    return {"message": _sentence(text), "code": code, "option": None, "traceback": tb}
