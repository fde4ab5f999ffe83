"""Request/response helpers shared by the routes: capped bodies, JSON errors, bearer auth."""
from __future__ import annotations

import hmac
import json
from functools import wraps

from starlette.requests import Request
from starlette.responses import JSONResponse

from .runtime import ApiError


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
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
    return bytes(buf)


async def read_json(request: Request, limit: int, *, allow_empty=False):
    body = await read_body(request, limit)
    if not body.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "empty body: expected a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}")
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
