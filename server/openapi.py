"""A hand-written OpenAPI 3.1 document for the server's routes (served at /openapi.json)."""
from __future__ import annotations

ERR = {"$ref": "#/components/schemas/Error"}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary, req=None, ok=None, ok_code="200", errors=(400, 404), params=(), auth=False,
        ok_content=None):
    d = {"summary": summary, "responses": {}}
    if req is not None:
        d["requestBody"] = {"required": True, **(req if "content" in req else _json(req))}
    d["responses"][ok_code] = {"description": "OK", **(ok_content or (_json(ok) if ok else {}))}
    for c in errors:
        d["responses"][str(c)] = {"description": "error", **_json(ERR)}
    if params:
        d["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                           for p in params]
    if auth:
        d["security"] = [{"bearer": []}, {}]
    return d


def openapi_document(state=None) -> dict:
    obj = {"type": "object"}
    sess = {"type": "object", "properties": {
        "id": {"type": "string"}, "model": {"type": "string"}, "split": {"type": "integer"},
        "n_layers": {"type": "integer"}, "hidden": {"type": "integer"},
        "dtype": {"enum": ["f32", "f16"]}, "position": {"type": "integer"},
        "context": {"type": "integer"}, "bytes": {"type": "integer"}, "ws": {"type": "string"}}}
    octet = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    comp = {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {}, "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "top_k": {"type": "integer"},
        "seed": {"type": "integer"}, "stop": {}, "stream": {"type": "boolean"}, "echo": {"type": "boolean"}}}
    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "items": obj},
        "max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "seed": {"type": "integer"},
        "stop": {}, "stream": {"type": "boolean"}, "stream_options": obj}}
    emb = {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string"}, "input": {}, "encoding_format": {"enum": ["float", "base64"]}}}
    sse = {"content": {"text/event-stream": {"schema": {"type": "string"}}, "application/json": {"schema": obj}}}
    paths = {
        "/v1/models": {"get": _op("List served models", ok=obj, errors=())},
        "/v1/models/{name}": {"get": _op("One model", ok=obj, params=["name"], errors=(404,))},
        "/v1/completions": {"post": _op("Text completion (SSE when stream=true)", comp, ok_content=sse,
                                        errors=(400, 401, 404, 413), auth=True)},
        "/v1/chat/completions": {"post": _op("Chat completion (SSE when stream=true)", chat, ok_content=sse,
                                             errors=(400, 401, 404, 413), auth=True)},
        "/v1/embeddings": {"post": _op("Embeddings (encoder models)", emb, ok=obj,
                                       errors=(400, 401, 404, 413), auth=True)},
        "/v1/sessions": {
            "post": _op("Open a split session", {"type": "object", "required": ["model", "split"], "properties": {
                "model": {"type": "string"}, "split": {"type": "integer"}, "dtype": {"enum": ["f32", "f16"]},
                "weights": {"enum": ["f32", "f16"]}, "context": {"type": "integer"}}},
                sess, "201", (400, 401, 404, 429), auth=True),
            "get": _op("List sessions and memory", ok=obj, errors=(401,), auth=True)},
        "/v1/sessions/{sid}": {"get": _op("Session info", ok=sess, params=["sid"], errors=(401, 404), auth=True),
                               "delete": _op("End a session", ok=obj, params=["sid"], errors=(401, 404), auth=True)},
        "/v1/sessions/{sid}/forward": {"post": _op(
            "Run layers [0, split) on little-endian int32 ids; returns [T, hidden] f32/f16 "
            "(headers X-Shape, X-Dtype, X-Position)", octet, ok_content=octet, params=["sid"],
            errors=(400, 401, 404, 409, 413, 415), auth=True)},
        "/v1/sessions/{sid}/reset": {"post": _op("Rewind to position 0", ok=obj, params=["sid"],
                                                 errors=(401, 404), auth=True)},
        "/v1/sessions/{sid}/truncate": {"post": _op("Rewind to a length", {"type": "object", "properties": {
            "length": {"type": "integer"}}}, obj, params=["sid"], errors=(400, 401, 404), auth=True)},
        "/v1/sessions/{sid}/ws": {"get": _op("WebSocket: binary int32 ids -> binary hidden states; "
                                             "text {op: reset|truncate|info}", ok_code="101",
                                             params=["sid"], errors=(), auth=True)},
        "/models/{name}/manifest.json": {"get": _op("Layer manifest (?dtype=f32|f16)", ok=obj,
                                                    params=["name"], errors=(400, 404))},
        "/models/{name}/{digest}/{fname}": {"get": _op(
            "A model file, content-addressed (immutable), Range/ETag aware", ok_content=octet,
            params=["name", "digest", "fname"], errors=(404, 416))},
        "/models/{name}/files/{fname}": {"get": _op("A model file (revalidated), Range/ETag aware",
                                                    ok_content=octet, params=["name", "fname"],
                                                    errors=(404, 416))},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pyapp server", "version": "0.1.0",
                 "description": "Split transformer inference: head layers here, tail in the browser."},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                                 "param": {}, "code": {"type": "integer"}}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
