"""A hand-written OpenAPI 3.1 document for the server's HTTP routes (served at /openapi.json).

It states what the server does, status by status: tests/test_server_schemathesis.py generates
thousands of requests from it and fails on any response it does not describe. The WebSocket
(``/v1/sessions/{sid}/ws``) is not an HTTP operation; it is described under ``x-websockets``.
"""
from __future__ import annotations

from functools import partial

ERR = {"$ref": "#/components/schemas/Error"}
DTYPES = ["f32", "f16"]
# every route can answer these: bad Host (421), cross-origin (403), method (405), overload (503)
COMMON = (403, 421)
POST_ERRORS = (400, 408, 413, 415, 429)


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary, req=None, ok=None, ok_code="200", errors=(400, 404), params=(), auth=False,
        ok_content=None, extra_ok=None, headers=(), query=(), links=None, op_id=None,
        examples: dict | None = None):
    """``examples``: path parameter -> example values (the served models' names and files)."""
    examples = examples or {}
    d = {"summary": summary, "responses": {}}
    if op_id:
        d["operationId"] = op_id
    if req is not None:
        d["requestBody"] = {"required": True, **(req if "content" in req else _json(req))}
    d["responses"][ok_code] = {"description": "OK", **(ok_content or (_json(ok) if ok else {}))}
    if links:
        d["responses"][ok_code]["links"] = links
    for code, resp in (extra_ok or {}).items():
        d["responses"][code] = resp
    for c in sorted(set(errors) | set(COMMON) | ({401} if auth else set())):
        d["responses"][str(c)] = {"description": "error", **_json(ERR)}
    parameters = [{"name": p, "in": "path", "required": True,
                   "schema": {"type": "string", **({"examples": examples[p]} if examples.get(p) else {})}}
                  for p in params]
    parameters += [{"name": n, "in": "header", "required": req_, "schema": s} for n, s, req_ in headers]
    parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in query]
    if parameters:
        d["parameters"] = parameters
    if auth:
        d["security"] = [{"bearer": []}, {}]
    return d


def _obj(props: dict, required=(), nullable=False) -> dict:
    """A closed object; with ``nullable``, an optional field may also be null (= its default)."""
    if nullable:
        props = {k: v if k in required else {"anyOf": [v, {"type": "null"}]} for k, v in props.items()}
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


def openapi_document(state=None) -> dict:
    names = sorted(state.registry.entries) if state is not None else []
    obj = {"type": "object"}
    model_name = {"type": "string", **({"examples": names} if names else {})}
    num = {"type": "number"}
    integer = {"type": "integer"}
    text = {"type": "string"}
    stop = {"anyOf": [{"type": "string", "minLength": 1},
                      {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
                      {"type": "null"}]}
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    examples = {"name": names, "fname": files} if names else {}
    op = partial(_op, examples=examples)
    sess = {"type": "object", "properties": {
        "id": text, "model": model_name, "split": integer, "n_layers": integer, "hidden": integer,
        "dtype": {"enum": DTYPES}, "weights": {"enum": DTYPES}, "position": integer,
        "context": integer, "bytes": integer, "ws": text, "key": text,
        "node": {"type": ["string", "null"]}, "load": {"type": "object", "properties": {
            "busy_sessions": integer, "waiting": integer, "workers": integer, "steps": integer,
            "ms_per_layer": {"type": ["number", "null"]}, "wait_ms": {"type": ["number", "null"]}}}}}
    octet = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    a_file = {"content": {t: {"schema": {}} for t in ("application/octet-stream", "application/json")}}
    sampling = {"temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "top_k": {"type": "integer", "minimum": 0}, "seed": integer, "stop": stop,
                "stream": {"type": "boolean"}, "n": {"const": 1}, "user": text,
                "stream_options": _obj({"include_usage": {"type": "boolean"}})}
    comp = _obj({"model": model_name, "prompt": {"anyOf": [
        {"type": "string", "minLength": 1}, {"type": "array", "items": integer, "minItems": 1}]},
        "max_tokens": {"type": "integer", "minimum": 1}, "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5}, **sampling},
        ["model", "prompt"], nullable=True)
    message = _obj({"role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {"anyOf": [text, {"type": "array", "items": _obj(
                        {"type": {"const": "text"}, "text": text}, ["type", "text"])}]}},
                   ["role", "content"])
    chat = _obj({"model": model_name, "messages": {"type": "array", "items": message, "minItems": 1},
                 "max_tokens": {"type": "integer", "minimum": 1},
                 "max_completion_tokens": {"type": "integer", "minimum": 1},
                 "logprobs": {"type": "boolean"},
                 "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20}, **sampling},
                ["model", "messages"], nullable=True)
    emb = _obj({"model": model_name, "input": {"anyOf": [
        {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1},
                                             "minItems": 1},
        {"type": "array", "items": integer, "minItems": 1}]},
        "encoding_format": {"enum": ["float", "base64"]}, "dimensions": {"type": "integer", "minimum": 1},
        "user": text}, ["model", "input"], nullable=True)
    sse = {"content": {"application/json": {"schema": obj}, "text/event-stream": {"schema": text}}}
    key = [("X-Session-Key", text, False)]
    # a byte range of a JSON file is not JSON: no schema for it
    file_ok = {"206": {"description": "a byte range (Content-Type of the whole file)",
                       "content": {"*/*": {}}},
               "304": {"description": "not modified"}}
    file_headers = [("Range", text, False), ("If-None-Match", text, False), ("If-Range", text, False)]
    compute_errors = (400, 404, 408, 413, 415, 429, 503)
    paths = {
        "/healthz": {"get": op("Liveness and session counts", ok=obj, errors=())},
        "/openapi.json": {"get": op("This document", ok=obj, errors=())},
        "/v1/models": {"get": op("List served models", ok=obj, errors=())},
        "/v1/models/{name}": {"get": op("One model", ok=obj, params=["name"], errors=(404,))},
        "/v1/completions": {"post": op("Text completion (SSE when stream=true)", comp, ok_content=sse,
                                        errors=compute_errors, auth=True)},
        "/v1/chat/completions": {"post": op("Chat completion (SSE when stream=true)", chat,
                                             ok_content=sse, errors=compute_errors, auth=True)},
        "/v1/embeddings": {"post": op("Embeddings (encoder models)", emb, ok=obj,
                                       errors=compute_errors, auth=True)},
        "/v1/sessions": {
            "post": op("Open a split session; the response's key is needed by every later call",
                        _obj({"model": model_name, "split": {"type": "integer", "minimum": 0},
                              "dtype": {"enum": DTYPES}, "weights": {"enum": DTYPES},
                              "context": {"type": "integer", "minimum": 1}}, ["model", "split"]),
                        sess, "201", compute_errors, auth=True, links={
                            "GetSession": {"operationId": "getSession", "parameters": {
                                "path.sid": "$response.body#/id", "header.X-Session-Key": "$response.body#/key"}},
                            "Forward": {"operationId": "forward", "parameters": {
                                "path.sid": "$response.body#/id", "header.X-Session-Key": "$response.body#/key"}},
                            "Truncate": {"operationId": "truncate", "parameters": {
                                "path.sid": "$response.body#/id", "header.X-Session-Key": "$response.body#/key"}},
                            "Delete": {"operationId": "deleteSession", "parameters": {
                                "path.sid": "$response.body#/id", "header.X-Session-Key": "$response.body#/key"}}}),
            "get": op("List sessions and memory (admin token)", ok=obj, errors=(), auth=True)},
        "/v1/sessions/{sid}": {
            "get": op("Session info", ok=sess, params=["sid"], errors=(404,), auth=True, headers=key,
                       op_id="getSession"),
            "delete": op("End a session", ok=obj, params=["sid"], errors=(404,), auth=True,
                          headers=key, op_id="deleteSession")},
        "/v1/sessions/{sid}/forward": {"post": op(
            "Run layers [0, split) on little-endian int32 ids; returns [T, hidden] f32/f16 "
            "(headers X-Shape, X-Dtype, X-Position)", octet, ok_content=octet, params=["sid"],
            errors=(400, 404, 408, 409, 413, 415, 503), auth=True,
            headers=key + [("X-Dtype", text, False), ("X-Expect-Position", integer, False)],
            op_id="forward")},
        "/v1/sessions/{sid}/reset": {"post": op("Rewind to position 0", ok=obj, params=["sid"],
                                                 errors=(400, 404, 408, 413, 415), auth=True, headers=key)},
        "/v1/sessions/{sid}/truncate": {"post": op(
            "Rewind to a length", _obj({"length": {"type": "integer", "minimum": 0}}, ["length"]), obj,
            params=["sid"], errors=(400, 404, 408, 413, 415), auth=True, headers=key,
            op_id="truncate")},
        "/v1/sessions/{sid}/split": {"post": op(
            "Move the split (docs/server.md, Moving the split). JSON {split, holds?, kv_dtype?, "
            "position?}: down, the response is the KV frames of the layers handed to the edge "
            "(the server drops its copy; headers X-Split-From, X-Split, X-Layers, X-Position); "
            "application/octet-stream KV frames with X-Split: up, the server takes the edge's KV",
            {"content": {"application/json": {"schema": _obj({
                "split": {"type": "integer", "minimum": 0},
                "holds": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "kv_dtype": {"enum": DTYPES}, "position": {"type": "integer", "minimum": 0}},
                ["split"])}, **octet["content"]}},
            ok_content={"content": {**octet["content"], "application/json": {"schema": sess}}},
            params=["sid"], errors=(400, 404, 408, 409, 413, 415, 429, 503), auth=True,
            headers=key + [("X-Split", integer, False), ("X-Expect-Position", integer, False)],
            op_id="moveSplit")},
        "/models/{name}/manifest.json": {"get": op(
            "Layer manifest", ok=obj, params=["name"], errors=(400, 404, 503),
            query=[("dtype", {"enum": DTYPES})])},
        "/models/{name}/{digest}/{fname}": {"get": op(
            "A model file, content-addressed (immutable), Range/ETag aware", ok_content=a_file,
            params=["name", "digest", "fname"], errors=(404, 416, 503), extra_ok=file_ok,
            headers=file_headers)},
        "/models/{name}/files/{fname}": {"get": op(
            "A model file (revalidated), Range/ETag aware", ok_content=a_file,
            params=["name", "fname"], errors=(404, 416, 503), extra_ok=file_ok, headers=file_headers)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pyapp server", "version": "0.2.0",
                 "description": "Split transformer inference: head layers here, tail in the browser. "
                                "Errors are JSON {error: {message, type, param, code}}; a wrong method "
                                "is 405 with Allow."},
        "paths": paths,
        "x-websockets": {"/v1/sessions/{sid}/ws": {
            "query": {"key": "the session's key (or X-Session-Key)", "token": "bearer token, if set"},
            "client": "binary int32 ids | binary PKV1 KV frames (during a move to the server) | "
                      "text {op: reset|truncate|info|move|commit|cancel, length?, split?, holds?, "
                      "kv_dtype?, position?}",
            "server": "binary hidden states | binary PKV1 KV frames (after a handover reply) | "
                      "text JSON reply, {op: handover, ...} or {error}",
            "close codes": {"4403": "wrong key", "4404": "session ended", "4408": "evicted (idle)",
                            "1008": "bad token or Origin"}}},
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type", "code"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                               "param": {}, "code": {"type": "integer"}}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
