"""Request/response helpers shared by the routes: capped bodies, strict JSON, errors, bearer auth."""
from __future__ import annotations

import hmac
import json
import logging
from functools import wraps

import anyio

from starlette.requests import Request
from starlette.responses import JSONResponse

from .runtime import ApiError

log = logging.getLogger("pyapp.server")

MAX_JSON_DEPTH = 32        # nesting of any JSON body (objects and arrays)
BODY_TIMEOUT = 30.0        # seconds the client may pause between body chunks


def error_response(status: int, message: str, type_: str | None = None, headers=None) -> JSONResponse:
    e = ApiError(status, message, type_)
    return JSONResponse(e.body(), status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ApiError(400, "bad Content-Length")
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes is over the limit of {limit}")
    buf = bytearray()
    stream = request.stream().__aiter__()
    while True:
        # a client that stops sending mid-body is cut off rather than held open for ever
        with anyio.move_on_after(BODY_TIMEOUT) as scope:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
        if scope.cancelled_caught:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
    return bytes(buf)


def _no_constant(name: str):
    raise ApiError(400, f"{name} is not valid JSON (numbers must be finite)")


def check_json_value(value, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than ``limit`` and strings with lone surrogates (not UTF-8)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "strings must be valid Unicode (a lone surrogate such as "
                                    "\\ud800 is not)")
        elif isinstance(v, (list, dict)):
            if depth > limit:
                raise ApiError(400, f"JSON nested deeper than {limit} levels")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str):
                    stack.append((k, depth))
                stack.append((x, depth + 1))


def parse_json(body: bytes | str):
    """Strict JSON: no NaN/Infinity, bounded nesting, valid Unicode. ApiError(400) otherwise."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}")
    check_json_value(data)
    return data


def require_json_type(request: Request) -> None:
    """415 unless the body is declared JSON: a cross-site form or text/plain POST never is."""
    ct = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ct != "application/json" and not (ct.startswith("application/") and ct.endswith("+json")):
        raise ApiError(415, "send the body as Content-Type: application/json")


async def read_json(request: Request, limit: int, *, allow_empty=False):
    body = await read_body(request, limit)
    if not body.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "empty body: expected a JSON object")
    require_json_type(request)
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def bearer_ok(token: str | None, headers, query) -> bool:
    if not token:
        return True
    got = None
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        got = auth[7:].strip()
    if got is None:
        got = query.get("token") or query.get("access_token")
    return got is not None and hmac.compare_digest(got.encode(), token.encode())


def compute_route(fn):
    """Bearer check (when the server has a token) and ApiError -> JSON for an HTTP route."""

    @wraps(fn)
    async def wrapper(request: Request):
        st = request.app.state.pyapp
        if not bearer_ok(st.token, request.headers, request.query_params):
            return error_response(401, "missing or wrong bearer token", "authentication_error",
                                  headers={"www-authenticate": "Bearer"})
        try:
            return await fn(request)
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)

    return wrapper


def client_id(request) -> str:
    """Who a request counts against for per-client limits: its peer address (a reverse proxy in
    front makes every client one; give each its own server or address then)."""
    c = request.client
    return c.host if c is not None else "unknown"
