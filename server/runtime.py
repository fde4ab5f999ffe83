"""Shared server state: limits, errors, loaded models (backend + tokenizer), manifests."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from pyapp import formats, store
from pyapp.weightfile import eos_ids, load_model_dir, weight_files


@dataclass
class Limits:
    max_sessions: int = 64           # open split sessions at once
    max_sessions_per_client: int = 32    # open sessions of one client (address or bearer token)
    max_inflight_per_client: int = 8     # completions/embeddings of one client running at once
    session_ttl: float = 600.0       # seconds a session may sit idle before it is evicted
    max_context: int = 2048          # tokens per session / request (capped by the model's own)
    max_body: int = 1 << 20          # bytes of any request body
    max_new_tokens: int = 1024       # per completion request
    max_session_bytes: int = 512 << 20   # KV cache of one session
    max_total_bytes: int = 8 << 30       # KV caches of all sessions together
    max_batch_inputs: int = 256      # inputs of one /v1/embeddings call
    threads: int = 4                 # compute threads (numpy runs off the event loop)
    evict_interval: float = 5.0      # seconds between idle sweeps

    @classmethod
    def from_dict(cls, d: dict | None):
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown limits: {', '.join(sorted(bad))}")
        return cls(**d)


class ApiError(Exception):
    """A client-visible error: HTTP status + one-line message."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


class ClientSlots:
    """At most ``limit`` requests of one client running at once (429 beyond)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used: dict[str, int] = {}

    def acquire(self, client: str):
        if self.used.get(client, 0) >= self.limit:
            raise ApiError(429, f"this client already has {self.limit} requests running; wait for "
                                "one to finish", "rate_limit_error")
        self.used[client] = self.used.get(client, 0) + 1
        done = False

        def release():
            nonlocal done
            if not done:
                done = True
                self.used[client] -= 1
                if not self.used[client]:
                    del self.used[client]
        return release


# --------------------------------------------------------------------------- tokenizer


class TokenizerAdapter:
    """encode/decode/chat over ``pyapp.tokenizer`` (what ``pyapp generate`` uses), falling back
    to ``tokenizers`` + ``pyapp.chat_template`` if that module cannot be imported."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        if not (self.dir / "tokenizer.json").is_file():
            raise ApiError(400, f"model {self.dir.name!r} has no tokenizer.json")
        self.config = {}
        p = self.dir / "tokenizer_config.json"
        if p.is_file():
            try:
                self.config = json.loads(p.read_text())
            except ValueError:
                self.config = {}
        try:
            from pyapp.tokenizer import Tokenizer

            self.impl = Tokenizer.from_pretrained(str(self.dir))
        except ImportError:
            from tokenizers import Tokenizer as HFTokenizer

            self.impl = HFTokenizer.from_file(str(self.dir / "tokenizer.json"))
        # one sequence at a time: padding (MiniLM's tokenizer.json asks for it) would be pooled,
        # exactly as `pyapp embed` avoids
        if hasattr(self.impl, "no_padding"):
            self.impl.no_padding()
        # nor truncation (MiniLM's asks for 128): an over-long input is a 400, never cut silently
        if hasattr(self.impl, "no_truncation"):
            self.impl.no_truncation()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.impl.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids) -> str:
        return self.impl.decode(list(ids), skip_special_tokens=True)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        from pyapp import chat_template as ct

        tpl = ct.chat_template_from_config(self.config)
        if not tpl:
            raise ApiError(400, f"model {self.dir.name!r} has no chat template")
        text = ct.render(tpl, messages, add_generation_prompt=True,
                         special_tokens=ct.special_tokens_from_config(self.config))
        return self.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------- models


def _load_backend(kind: str, model_dir: Path, dtype: str):
    if kind == "numpy":
        from pyapp.numpy_backend import NumpyBackend

        return NumpyBackend.load(model_dir, dtype)
    if kind == "wgpu":
        try:
            from pyapp.gpu import GpuBackend  # type: ignore
        except Exception as e:  # pragma: no cover - depends on the GPU engineer's module
            raise ApiError(503, f"the wgpu backend is unavailable: {e}", "server_error")
        return GpuBackend.load(model_dir, dtype)
    raise ValueError(f"unknown backend {kind!r}")


class ModelEntry:
    """One served model: op lists, lazily loaded weights per dtype, tokenizer, eos ids."""

    def __init__(self, name: str, backend: str, limits: Limits, log=None, weights: str = "f32"):
        from .verify import Verifier

        self.name = name
        self.dir = store.model_path(name)
        self.verifier = Verifier(name, self.dir, log)
        self.verifier.check_sizes()      # a truncated/unreadable file stops the start, in one line
        self.model = load_model_dir(self.dir)
        self.backend_kind = backend
        self.limits = limits
        self._backends: dict = {}
        self._tok = None
        self._lock = threading.Lock()
        self.context = min(self.model.max_context, limits.max_context)
        self.created = int(os.stat(self.dir).st_mtime)
        self.eos_ids = eos_ids(self.dir, self.model)
        # the weight file the server's own layers run by default (`pyapp serve --format`): the
        # one asked for where this model has it, else f32; a session may ask for another
        self.weights = weights if weights in self.dtypes() else "f32"

    def dtypes(self) -> list[str]:
        return [d for d, fn in store.WEIGHT_FILES.items()
                if d in formats.SERVED_TAGS and (self.dir / fn).is_file()]

    def weight_names(self, dtype: str) -> list[str]:
        return sorted({p.relative_to(self.dir).as_posix() for p in weight_files(self.dir, dtype).values()})

    def backend(self, dtype: str | None = None):
        """``dtype``'s backend (None: :attr:`weights`). Blocking (loads weights on first use; waits for the weights' sha256 check, 503 if it
        failed): call from a worker thread."""
        dtype = dtype or self.weights
        if dtype in self.dtypes():
            self.verifier.require_all(self.weight_names(dtype))
        with self._lock:
            b = self._backends.get(dtype)
            if b is None:
                if dtype not in self.dtypes():
                    raise ApiError(400, f"model {self.name!r} has no {dtype} weights")
                b = self._backends[dtype] = _load_backend(self.backend_kind, self.dir, dtype)
            return b

    @property
    def tokenizer(self) -> TokenizerAdapter:
        with self._lock:
            if self._tok is None:
                self._tok = TokenizerAdapter(self.dir)
            return self._tok

    def info(self) -> dict:
        m = self.model
        return {"id": self.name, "object": "model", "created": self.created,
                "owned_by": "pyapp", "architecture": m.arch, "kind": m.kind,
                "n_layers": m.n_layers, "hidden": m.hidden, "vocab": m.vocab,
                "context": self.context, "dtypes": self.dtypes(), "weights": self.weights,
                "manifest": f"/models/{self.name}/manifest.json"}


class Registry:
    def __init__(self, names: list[str], backend: str, limits: Limits, log=None, weights: str = "f32"):
        self.limits = limits
        self.backend_kind = backend
        self.entries: dict[str, ModelEntry] = {}
        for n in names:
            self.entries[n] = ModelEntry(n, backend, limits, log, weights)

    def get(self, name) -> ModelEntry:
        if not isinstance(name, str):
            raise ApiError(400, "model must be a string naming a served model (GET /v1/models)",
                           param="model")
        if name not in self.entries:
            have = ", ".join(self.entries) or "none"
            raise ApiError(404, f"unknown model {name[:100]!r} (served: {have})", param="model",
                           type_="model_not_found")
        return self.entries[name]
