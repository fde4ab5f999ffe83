"""The Starlette app: static site, model files + manifests, split sessions, OpenAI-style API.

``create_app(models, backend, token, web_dir, limits, cors_origins)`` builds it; ``server.main``
runs it with uvicorn, and the tests start it in-process on a free loopback port.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pyapp import store
from pyapp.kvwire import KVHeader, read_header

from . import manifest as mf
from . import openai_api
from .guard import Guard, allowed_hosts, install_log_redaction
from .httputil import (bearer_ok, client_id, compute_route, error_response, parse_json, read_body,
                       read_json, require_json_type)
from .ring import Ring
from .runtime import ApiError, ClientSlots, Limits, Registry
from .sessions import SessionManager
from .static import IMMUTABLE, REVALIDATE, file_response, safe_join

ROOT = Path(__file__).resolve().parent.parent
_warn = logging.getLogger("pyapp.server").warning
DEFAULT_WEB_DIR = ROOT / "web"
PLACEHOLDER = Path(__file__).resolve().parent / "index.html"


# --------------------------------------------------------------------------- manifests + files


async def _manifest(st, name: str, dtype: str) -> dict:
    entry = st.registry.get(name)
    if dtype not in mf.DTYPES:
        raise ApiError(400, f"dtype must be one of {', '.join(mf.DTYPES)}", param="dtype")
    if dtype not in entry.dtypes():
        raise ApiError(404, f"model {name!r} has no {dtype} weights")
    # a manifest is only ever built over (and only lists) files that passed their sha256 check
    names = [p.name for p in mf.model_files(entry.dir, dtype)]
    await anyio.to_thread.run_sync(entry.verifier.require_all, names)
    return await anyio.to_thread.run_sync(mf.get_manifest, name, entry.dir, dtype)


async def manifest_route(request: Request):
    st = request.app.state.pyapp
    try:
        m = await _manifest(st, request.path_params["name"], request.query_params.get("dtype", "f32"))
    except ApiError as e:
        return JSONResponse(e.body(), status_code=e.status)
    return JSONResponse(mf.public(m), headers={"cache-control": REVALIDATE})


async def _model_file(request: Request, digest: str | None):
    st = request.app.state.pyapp
    name, fname = request.path_params["name"], request.path_params["fname"]
    try:
        entry = st.registry.get(name)
        # Only names a manifest lists can be served; the store-relative path is re-checked on disk.
        found = None
        for dt in entry.dtypes():
            if fname not in {p.name for p in mf.model_files(entry.dir, dt)}:
                continue
            await anyio.to_thread.run_sync(entry.verifier.require, fname)  # 503 if it failed
            # the verified digest when one was recorded (so a failing sibling file does not take
            # this one down with the manifest), else the manifest's
            sha = entry.verifier.sha256(fname)
            if sha is None:
                sha = (await _manifest(st, name, dt))["files"][fname]["sha256"]
            if digest is None or sha[:16] == digest:
                found = {"sha256": sha}
                break
    except ApiError as e:
        return JSONResponse(e.body(), status_code=e.status)
    if found is None:
        return error_response(404, f"model {name!r} has no file {fname!r}"
                                   + (f" with digest {digest}" if digest else ""))
    path = safe_join(st.store_root, f"{name}/{fname}")
    if path is None:
        return error_response(404, f"model {name!r} has no file {fname!r}")
    if digest:
        return file_response(request, path, etag=f'"{found["sha256"]}"', cache_control=IMMUTABLE)
    return file_response(request, path, cache_control=REVALIDATE)


async def model_file_addressed(request: Request):
    return await _model_file(request, request.path_params["digest"])


async def model_file_plain(request: Request):
    return await _model_file(request, None)


# --------------------------------------------------------------------------- sessions


def _is_admin(request) -> bool:
    admin = request.app.state.pyapp.admin_token
    return bool(admin) and bearer_ok(admin, request.headers, {})


def _session(request: Request):
    """The path's session, if the request presents its key (or the admin token)."""
    st = request.app.state.pyapp
    return st.sessions.get(request.path_params["sid"], request.headers.get("x-session-key"),
                           admin=_is_admin(request))


@compute_route
async def create_session(request: Request):
    st = request.app.state.pyapp
    body = await read_json(request, st.limits.max_body)
    s = await st.sessions.create(body, owner=client_id(request))
    return JSONResponse({**s.created_info(), "load": st.sessions.load()}, status_code=201)


async def list_sessions(request: Request):
    """Every session's id is a secret of its owner's: only the admin token may list them."""
    st = request.app.state.pyapp
    if not st.admin_token:
        return error_response(403, "listing sessions needs the admin token (start the server with "
                                   "--admin-token T); GET /healthz has the counts",
                              "permission_error")
    if not _is_admin(request):
        return error_response(401, "listing sessions needs the admin token", "authentication_error",
                              headers={"www-authenticate": "Bearer"})
    return JSONResponse({**st.sessions.stats(),
                         "data": [s.info() for s in st.sessions.sessions.values()]})


async def sessions_root(request: Request):
    if request.method == "GET":
        return await list_sessions(request)
    return await create_session(request)


@compute_route
async def session_route(request: Request):
    st = request.app.state.pyapp
    s = _session(request)
    if request.method == "DELETE":
        st.sessions.delete(s)
        return JSONResponse({"id": s.id, "deleted": True})
    return JSONResponse({**s.info(), "load": st.sessions.load()})


def _int_header(request, name):
    v = request.headers.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer")


@compute_route
async def forward_route(request: Request):
    st = request.app.state.pyapp
    s = _session(request)
    ct = request.headers.get("content-type", "").split(";")[0].strip()
    if ct != "application/octet-stream":
        raise ApiError(415, "send token ids as application/octet-stream (little-endian int32)")
    dt = request.headers.get("x-dtype", "i32").lower()
    if dt not in ("i32", "int32"):
        raise ApiError(400, f"token ids must be int32 (X-Dtype: i32), not {dt!r}")
    expect = _int_header(request, "x-expect-position")
    body = await read_body(request, min(st.limits.max_body, 4 * s.entry.context))
    out, T, pos = await st.sessions.forward(s, body, expect)
    return Response(out, media_type="application/octet-stream", headers={
        "x-shape": f"{T},{s.entry.model.hidden}", "x-dtype": s.dtype, "x-position": str(pos),
        "cache-control": "no-store"})


@compute_route
async def reset_route(request: Request):
    st = request.app.state.pyapp
    s = _session(request)
    body = await read_body(request, st.limits.max_body)
    if body.strip():  # an empty body is fine; anything else must be JSON (and is ignored)
        require_json_type(request)
        parse_json(body)
    pos = await st.sessions.rewind(s, 0)
    return JSONResponse({"id": s.id, "position": pos})


@compute_route
async def truncate_route(request: Request):
    st = request.app.state.pyapp
    s = _session(request)
    body = await read_json(request, st.limits.max_body)
    if set(body) - {"length"}:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(set(body) - {'length'}))}")
    if "length" not in body:
        raise ApiError(400, "truncate needs {\"length\": n}", param="length")
    pos = await st.sessions.rewind(s, body["length"])
    return JSONResponse({"id": s.id, "position": pos})


async def session_ws(ws: WebSocket):
    """Binary frame in: int32 ids; binary frame out: hidden states (same bytes as HTTP).
    Text frame ``{"op": "reset"|"truncate"|"info", "length": n}`` -> a JSON text reply.
    Errors come back as a text frame ``{"error": {...}}`` and the socket stays open."""
    st = ws.app.state.pyapp
    if not bearer_ok(st.token, ws.headers, ws.query_params):
        await ws.close(code=1008)
        return
    try:
        s = st.sessions.get(ws.path_params["sid"],
                            ws.query_params.get("key") or ws.headers.get("x-session-key"))
    except ApiError as e:
        await ws.close(code=4404 if e.status == 404 else 4403)
        return
    await ws.accept()
    s.sockets.add(ws)
    limit = min(st.limits.max_body, 4 * s.entry.context)
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            try:
                if msg.get("bytes") is not None:
                    data = msg["bytes"]
                    if s.move is not None and s.move.owner is ws and not s.move.to_edge:
                        if await st.sessions.receive_frame(s, data, ws):
                            await ws.send_text(json.dumps(_moved(s, "move")))
                        continue
                    if len(data) > limit:
                        raise ApiError(413, f"frame of {len(data)} bytes is over the limit of {limit}")
                    out, T, pos = await st.sessions.forward(s, data)
                    await ws.send_bytes(out)
                    continue
                req = parse_json(msg.get("text") or "")
                op = req.get("op") if isinstance(req, dict) else None
                if op == "move":
                    await _ws_move(st, s, ws, req)
                    continue
                if op in ("commit", "cancel"):
                    if op == "commit":
                        await st.sessions.commit_move(s, ws)
                    else:
                        st.sessions.cancel_move(s, ws)
                    await ws.send_text(json.dumps(_moved(s, op)))
                    continue
                if op == "reset":
                    pos = await st.sessions.rewind(s, 0)
                elif op == "truncate":
                    if "length" not in req:
                        raise ApiError(400, "truncate needs a length", param="length")
                    pos = await st.sessions.rewind(s, req["length"])
                elif op == "info":
                    if s.closed:
                        raise ApiError(404, f"unknown session {s.id!r} (ended or evicted)")
                    await ws.send_text(json.dumps({**s.info(), "load": st.sessions.load()}))
                    continue
                else:
                    raise ApiError(400, f"unknown op {op!r}: use reset, truncate, info, move, "
                                        "commit or cancel")
                await ws.send_text(json.dumps({"ok": True, "op": op, "position": pos}))
            except ApiError as e:
                await ws.send_text(json.dumps(e.body()))
                if e.status == 404:  # the session is gone
                    if s.closed:
                        return
                    await ws.close(code=4404)
                    return
    except (WebSocketDisconnect, RuntimeError):
        pass  # client went away, or the session ended and closed this socket
    finally:
        s.sockets.discard(ws)
        st.sessions.cancel_move(s, ws)   # a cut hand-over leaves the session at its old split


def _moved(s, op: str) -> dict:
    return {"ok": True, "op": op, "split": s.split, "position": s.position}


async def _ws_move(st, s, ws, req: dict):
    """``{"op": "move", ...}``: the handover header, then (to the edge) its KV frames; the
    client answers with commit, or (to the server) with its KV frames."""
    move, frames = await st.sessions.start_move(s, req, owner=ws)
    await ws.send_text(json.dumps({**move.info(), "frames": len(frames),
                                   "bytes": sum(len(f) for f in frames)}))
    for f in frames:
        await ws.send_bytes(f)
    if not move.to_edge and not move.layers:   # nothing to receive: done at once
        await st.sessions.finish_move(s, ws)
        await ws.send_text(json.dumps(_moved(s, "move")))


@compute_route
async def split_route(request: Request):
    """POST /v1/sessions/<id>/split: JSON {split, holds?, kv_dtype?, position?} moves the split
    (down: the response is the KV frames, and the server has dropped its copy); an
    application/octet-stream body of KV frames with X-Split moves it up."""
    st = request.app.state.pyapp
    s = _session(request)
    ct = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ct == "application/octet-stream":
        return await _http_move_up(request, st, s)
    body = await read_json(request, st.limits.max_body)
    move, frames = await st.sessions.start_move(s, body)
    try:
        if not move.to_edge and move.layers:
            raise ApiError(400, f"moving the split up to {move.new} needs the edge's KV of layers "
                                f"{move.old}..{move.new - 1}: send its frames as "
                                "application/octet-stream with X-Split", param="split")
        if move.to_edge:
            await st.sessions.commit_move(s)
        else:
            await st.sessions.finish_move(s)
    finally:
        st.sessions.cancel_move(s)
    return Response(b"".join(frames), media_type="application/octet-stream", headers={
        "x-split-from": str(move.old), "x-split": str(s.split), "x-position": str(s.position),
        "x-layers": ",".join(str(i) for i in move.layers), "cache-control": "no-store"})


async def _http_move_up(request, st, s):
    new = _int_header(request, "x-split")
    if new is None:
        raise ApiError(400, "send X-Split: the split to move up to", param="x-split")
    expect = _int_header(request, "x-expect-position")
    move, _ = await st.sessions.start_move(s, {"split": new, **({} if expect is None else {"position": expect})})
    try:
        if move.to_edge:
            raise ApiError(400, f"X-Split {new} is below the split {move.old}: moving down takes "
                                "a JSON request", param="x-split")
        m = s.entry.model
        full = KVHeader(0, 0, move.position, m.n_kv_heads, m.head_dim).frame_bytes
        body = await read_body(request, max(1, full * len(move.layers)))
        frames, off = [], 0
        while off < len(body):
            try:
                n = read_header(body, off).frame_bytes
            except ValueError as e:
                raise ApiError(400, str(e))
            frames.append(memoryview(body)[off:off + n])
            off += n
        if len(frames) != len(move.layers):
            raise ApiError(400, f"moving the split from {move.old} to {move.new} at position "
                                f"{move.position} takes {len(move.layers)} KV frame(s), not {len(frames)}")
        if not frames:
            await st.sessions.finish_move(s)
        for f in frames:
            await st.sessions.receive_frame(s, f)
    finally:
        st.sessions.cancel_move(s)
    return JSONResponse({"id": s.id, **_moved(s, "move")})


# --------------------------------------------------------------------------- site


def _placeholder(st) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.model.arch)}</td>"
        f"<td>{e.model.n_layers}</td><td>{e.model.kind}</td>"
        f"<td><a href=\"/models/{html.escape(e.name)}/manifest.json\">manifest</a></td></tr>"
        for e in st.registry.entries.values())
    return PLACEHOLDER.read_text().replace("{{ROWS}}", rows)


async def static_route(request: Request):
    st = request.app.state.pyapp
    rel = request.path_params.get("path", "")
    if rel in ("", "index.html"):
        idx = safe_join(st.web_dir, "index.html") if st.web_dir else None
        if idx is None:
            return HTMLResponse(_placeholder(st), headers={"cache-control": REVALIDATE})
        return file_response(request, idx)
    path = safe_join(st.web_dir, rel) if st.web_dir else None
    if path is None:
        return error_response(404, f"not found: /{rel}")
    return file_response(request, path, cache_control=REVALIDATE)


async def health(request: Request):
    st = request.app.state.pyapp
    return JSONResponse({"ok": True, "node": st.node, "models": list(st.registry.entries),
                         **st.sessions.stats(), "load": st.sessions.load()})


async def openapi_route(request: Request):
    from .openapi import openapi_document

    return JSONResponse(openapi_document(request.app.state.pyapp))


# --------------------------------------------------------------------------- app


async def _http_error(request, exc: HTTPException):
    return error_response(exc.status_code, exc.detail or "error", headers=getattr(exc, "headers", None))


async def _api_error(request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status)


def _ring(node: str | None, nodes: list[str] | None) -> Ring | None:
    if not nodes:
        if node is not None:
            raise ValueError("--node needs --ring (every node's name, in the balancer's order)")
        return None
    if node not in nodes:
        raise ValueError(f"--node {node!r} is not one of the ring's nodes {', '.join(nodes)}")
    return Ring(list(nodes))


def create_app(models: list[str] | None = None, backend: str = "numpy", token: str | None = None,
               web_dir: str | Path | None = DEFAULT_WEB_DIR, limits: Limits | dict | None = None,
               cors_origins: list[str] | None = None, preload: bool = False,
               hosts: list[str] | None = None, admin_token: str | None = None,
               bind_host: str | None = None, log=None, node: str | None = None,
               ring: list[str] | None = None, weights: str = "f32") -> Starlette:
    """``hosts``: Host names served besides the loopback ones ('*' for any); ``admin_token``:
    the bearer token that may list (and act on) every session; ``log``: where weight
    verification reports (default: the ``pyapp.server`` logger); ``node`` and ``ring``: this
    process's name and every node's, in the balancer's consistent-hash ring (server/ring.py);
    ``weights``: the weight format the server's own layers run where a model has it (else f32)."""
    limits = Limits.from_dict(limits)
    if backend not in ("numpy", "wgpu"):
        raise ValueError(f"unknown backend {backend!r}: use numpy or wgpu")
    if not models:
        models = [m["name"] for m in store.list_models()]
    hash_ring = _ring(node, ring)
    registry = Registry(list(models), backend, limits, log, weights)
    state = SimpleNamespace(registry=registry,
                            sessions=SessionManager(registry, limits, hash_ring, node),
                            limits=limits, node=node, token=token or None, admin_token=admin_token or None,
                            inflight=ClientSlots(limits.max_inflight_per_client),
                            store_root=store.models_dir(),
                            web_dir=Path(web_dir) if web_dir else None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        sweeper = asyncio.ensure_future(state.sessions.sweeper())
        for e in registry.entries.values():
            if e.verifier.start() is None:
                (log or _warn)(f"model {e.name}: no recorded sha256 ({e.dir}/pyapp.json); "
                                "its files are served unverified")
        if preload:
            for e in registry.entries.values():
                try:
                    await anyio.to_thread.run_sync(e.backend)
                    for dt in e.dtypes():  # hash once now rather than on the first browser's request
                        await _manifest(state, e.name, dt)
                except ApiError as err:  # a file failed its check: logged; its routes answer 503
                    (log or _warn)(f"model {e.name}: not loaded: {err.message}")
        try:
            yield
        finally:
            sweeper.cancel()

    # /v1 is its own router so a wrong method is a 405 (with Allow), never the site's 404
    api = [
        Route("/models", openai_api.list_models),
        Route("/models/{name}", openai_api.get_model),
        Route("/completions", openai_api.completions, methods=["POST"]),
        Route("/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/sessions", sessions_root, methods=["GET", "POST"]),
        Route("/sessions/{sid}", session_route, methods=["GET", "DELETE"]),
        Route("/sessions/{sid}/forward", forward_route, methods=["POST"]),
        Route("/sessions/{sid}/reset", reset_route, methods=["POST"]),
        Route("/sessions/{sid}/truncate", truncate_route, methods=["POST"]),
        Route("/sessions/{sid}/split", split_route, methods=["POST"]),
        WebSocketRoute("/sessions/{sid}/ws", session_ws),
    ]
    routes = [
        Route("/healthz", health),
        Route("/openapi.json", openapi_route),
        Mount("/v1", routes=api),
        Route("/models/{name}/manifest.json", manifest_route),
        Route("/models/{name}/files/{fname}", model_file_plain, methods=["GET", "HEAD"]),
        Route("/models/{name}/{digest}/{fname}", model_file_addressed, methods=["GET", "HEAD"]),
        Route("/", static_route, methods=["GET", "HEAD"]),
        Route("/{path:path}", static_route, methods=["GET", "HEAD"]),
    ]
    from starlette.middleware import Middleware

    install_log_redaction()
    middleware = [Middleware(Guard, hosts=allowed_hosts(hosts, bind_host), cors_origins=cors_origins)]
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                     allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
                                     allow_headers=["authorization", "content-type", "range",
                                                    "if-none-match", "if-range", "x-dtype",
                                                    "x-expect-position", "x-session-key", "x-split"],
                                     expose_headers=["x-shape", "x-dtype", "x-position", "x-split", "x-split-from",
                                                     "x-layers", "etag",
                                                     "content-range", "accept-ranges"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, ApiError: _api_error})
    app.state.pyapp = state
    return app
