"""The edge's JavaScript: ``pyapp/edge/*.js``, shipped as package data beside this module and
evaluated once per page (``run_js``), like ``pyapp/kernels/*.wgsl``.

Each file is one JS expression: a function (``ws.js``, ``sse.js``, ``probe.js``, ...) or an
object of functions (``stream.js``, ``measure.js``).  ``tests/test_edge_js.py`` lints them with
``node --check``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The text of ``name``.js."""
    return resources.files(__package__).joinpath(f"{name}.js").read_text(encoding="utf-8")


def names() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files(__package__).iterdir() if p.name.endswith(".js"))


_evaluated: dict = {}


def load(name: str):
    """``name``.js evaluated in the page (a JsProxy), once per page."""
    obj = _evaluated.get(name)
    if obj is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]
        obj = _evaluated[name] = run_js(source(name))
    return obj
