"""`pyapp serve`: set up whatever is missing, then run the server with uvicorn.

    pyapp serve [--model NAME ...] [--host 127.0.0.1] [--port 8000] [--backend numpy|wgpu]
                [--format f32|f16|q4_1|q8_0|q4_k_m] [--token T] [--admin-token T] [--cors ORIGIN ...] [--allowed-host NAME ...]
                [--max-sessions N] [--session-ttl S] [--max-context N] [--max-new-tokens N]
                [--max-connections N] [--header-timeout S] [--node NAME --ring A,B,...]
                [--no-setup]

Without --model it serves smollm2-135m and minilm-l6, pulling them into the store first if they
are not there. The site's vendored files (Pyodide, tokenizer JS, the pyapp and micropip wheels)
are refreshed by server.assets.ensure_assets().
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from pyapp.formats import SERVED_TAGS

DEFAULT_MODELS = ("smollm2-135m", "minilm-l6")


def _log(msg):
    print(f"[pyapp serve] {msg}", file=sys.stderr, flush=True)


def build_parser():
    p = argparse.ArgumentParser(prog="pyapp serve", description="Run the pyapp server.")
    p.add_argument("--model", action="append", default=None,
                   help="a model to serve (repeatable); default: smollm2-135m and minilm-l6")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["numpy", "wgpu"], default="numpy")
    p.add_argument("--format", default="f32", choices=list(SERVED_TAGS),
                   help="the weight format the server's own layers run (completions, embeddings, "
                        "sessions that name none) where a model has it, else f32; the edge picks its own")
    p.add_argument("--token", default=os.environ.get("PYAPP_TOKEN"),
                   help="require 'Authorization: Bearer T' on compute routes (env PYAPP_TOKEN)")
    p.add_argument("--admin-token", default=os.environ.get("PYAPP_ADMIN_TOKEN"),
                   help="bearer token that may list and end every session (env PYAPP_ADMIN_TOKEN)")
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="allow this origin cross-site (repeatable; '*' for any). Off by default")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host name served besides the loopback ones (repeatable; '*' for any)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections + requests before new requests get 503")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client may take to send a request's headers")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--max-sessions-per-client", type=int, default=32,
                   help="a client over this recycles its own least recently used idle session")
    p.add_argument("--session-ttl", type=float, default=600.0, help="idle seconds before eviction")
    p.add_argument("--max-context", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--max-body", type=int, default=1 << 20, help="bytes")
    p.add_argument("--threads", type=int, default=4, help="compute threads")
    p.add_argument("--node", default=None, metavar="NAME",
                   help="this process's name in the balancer's consistent-hash ring (with --ring)")
    p.add_argument("--ring", default=None, metavar="A,B,...",
                   help="every node's name: session ids are minted so the ring maps them here")
    p.add_argument("--web-dir", default=None, help="static site folder (default: <repo>/web)")
    p.add_argument("--no-setup", action="store_true",
                   help="do not pull models or refresh web assets; serve what is there")
    p.add_argument("--no-preload", action="store_true", help="load weights on first use")
    p.add_argument("--log-level", default="info")
    return p


def prepare(models, no_setup=False):
    """Pull missing models, refresh the web assets. Returns the model names to serve."""
    from pyapp import store

    for name in models:
        try:
            store.model_path(name)
            _log(f"model {name}: in the store ({store.models_dir() / name})")
        except store.ModelNotFound:
            if no_setup:
                raise
            _log(f"model {name}: not in the store, pulling ...")
            from pyapp.convert import pull

            t0 = time.time()
            pull(name)
            _log(f"model {name}: ready in {time.time() - t0:.0f} s")
    if not no_setup:
        from . import assets

        try:
            info = assets.ensure_assets(log=lambda m: _log(f"assets: {m}"))
            _log(f"assets: web/vendor ready, wheels: {info.get('pyapp')}, {info.get('micropip')}")
        except Exception as e:  # noqa: BLE001 - a page that cannot boot is not worth serving
            raise SystemExit(f"pyapp serve: error: the site's assets are not ready ({e}); "
                             "fix that (or pass --no-setup to serve only what is there)") from e
    return list(models)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    a = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    from pyapp.store import PyappError

    models = a.model or list(DEFAULT_MODELS)
    try:
        models = prepare(models, a.no_setup)
    except PyappError as e:
        print(f"pyapp serve: error: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from .app import DEFAULT_WEB_DIR, create_app

    limits = {"max_sessions": a.max_sessions, "max_sessions_per_client": a.max_sessions_per_client,
              "session_ttl": a.session_ttl,
              "max_context": a.max_context, "max_new_tokens": a.max_new_tokens,
              "max_body": a.max_body, "threads": a.threads}
    try:
        app = create_app(models, backend=a.backend, token=a.token, admin_token=a.admin_token,
                         web_dir=a.web_dir or DEFAULT_WEB_DIR, limits=limits,
                         cors_origins=a.cors, preload=not a.no_preload,
                         hosts=a.allowed_host, bind_host=a.host, log=_log, node=a.node,
                         ring=a.ring.split(",") if a.ring else None, weights=a.format)
    except (PyappError, ValueError, OSError) as e:
        print(f"pyapp serve: error: {e}", file=sys.stderr)
        return 1
    st = app.state.pyapp
    url = f"http://{a.host}:{a.port}"
    if not a.no_preload:
        _log(f"loading weights for {', '.join(models)} ...")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            for e in st.registry.entries.values():
                m = e.model
                _log(f"model {e.name}: {m.arch}, {m.n_layers} layers, hidden {m.hidden}, "
                     f"context {e.context}, manifest {url}/models/{e.name}/manifest.json")
            _log(f"backend {a.backend}; auth {'bearer token' if a.token else 'off'}; "
                 f"CORS {', '.join(a.cors) if a.cors else 'off'}; max {a.max_sessions} sessions, "
                 f"idle TTL {a.session_ttl:g} s"
                 + (f"; node {a.node} of ring {a.ring}" if a.node else ""))
            _log(f"listening: site {url}/   OpenAI API {url}/v1   OpenAPI {url}/openapi.json")

    config = uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                            ws="websockets-sansio", http=header_timeout_protocol(a.header_timeout),
                            limit_concurrency=a.max_connections, timeout_keep_alive=5,
                            h11_max_incomplete_event_size=64 << 10)
    server = Server(config)
    server.run()
    return 0 if server.started else 1


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, plus a deadline on a request's headers: uvicorn cancels its
    keep-alive timer on the first byte, so a client that sends half a request would otherwise
    hold its connection for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:   # headers still incomplete
                self._arm()
            elif self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self):
            self._header_timer = None
            if (self.conn.their_state is h11.IDLE and not self.transport.is_closing()
                    and self.transport.get_protocol() is self):
                self.transport.close()

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutH11


if __name__ == "__main__":
    sys.exit(main())
