"""The outermost layer of the app: Host allow-list, Origin checks, and errors that never leak.

* ``Host`` must be a loopback name or one given with ``--allowed-host`` (a DNS-rebinding page has
  the attacker's host name in ``Host``), else 421.
* A request that changes state (any method but GET/HEAD/OPTIONS) and every WebSocket handshake
  that carries an ``Origin`` must come from the page's own origin or one ``--cors`` allows, else
  403: a cross-site page can neither create nor use sessions nor spend the server's compute.
* An exception no route turned into an ApiError becomes a generic 500 JSON (the traceback goes to
  the log, never to the client) without closing a healthy keep-alive connection.
* Query-string secrets (``token``, ``access_token``, ``key``) are masked in uvicorn's logs.
"""
from __future__ import annotations

import json
import logging
import re
import secrets

from starlette.datastructures import Headers

log = logging.getLogger("pyapp.server")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_QUERY = re.compile(r"([?&](?:token|access_token|key)=)[^&\s\"]*", re.IGNORECASE)


def host_name(host_header: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1' (lower case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts(extra: list[str] | None, bind_host: str | None = None) -> frozenset[str]:
    hosts = set(LOOPBACK_HOSTS) | {host_name(h) for h in (extra or [])}
    if bind_host and bind_host not in ("0.0.0.0", "::", ""):
        hosts.add(host_name(bind_host))
    return frozenset(hosts)


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in lg.filters):
            lg.addFilter(RedactSecrets())


def _error_body(status: int, message: str, type_: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": status}}).encode()


async def _send_json(send, status: int, message: str, type_: str = "invalid_request_error"):
    body = _error_body(status, message, type_)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app, hosts: frozenset[str], cors_origins: list[str] | None = None):
        self.app = app
        self.hosts = hosts
        self.any_host = "*" in hosts
        self.cors = frozenset(cors_origins or ())

    def origin_ok(self, origin: str, host: str, scheme: str) -> bool:
        if "*" in self.cors or origin in self.cors:
            return True
        own = "https" if scheme in ("https", "wss") else "http"
        return origin.lower() == f"{own}://{host.lower()}"

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        problem = None
        if not self.any_host and host_name(host) not in self.hosts:
            problem = (421, f"Host {host_name(host)[:100]!r} is not served here "
                            "(start the server with --allowed-host NAME to allow it)")
        else:
            origin = headers.get("origin")
            changes_state = kind == "websocket" or scope["method"] not in SAFE_METHODS
            if origin is not None and changes_state and not self.origin_ok(origin, host, scope["scheme"]):
                problem = (403, f"cross-origin request from {origin[:100]!r} refused "
                                "(start the server with --cors ORIGIN to allow it)")
        if problem is not None:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": problem[1][:120]})
            else:
                await _send_json(send, *problem)
            return
        if kind == "websocket":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the last resort: log it, answer JSON, keep the connection
            ref = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", ref, scope["method"], scope["path"])
            if not started:
                await _send_json(send, 500, f"internal error (reference {ref}; see the server log)",
                                 "server_error")
