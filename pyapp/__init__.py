"""pyapp: split transformer inference between a server and the browser's WebGPU.

In the page (Pyodide), ``import pyapp`` gives the edge API, the same calls as JS's
``window.pyapp`` with snake_case names: ``await pyapp.generate(...)``, ``embed``, ``tokenize``,
``default_split``, ``adapter``, ``list_models`` (JS ``models``: ``pyapp.models`` is the
op-list module), ``run_python``, ``stop``, ``stats``
(``pyapp/edge/api.py``, docs/edge.md), loaded on first use so that CPython users of the store, the
numpy executor or the server import nothing of the edge.
"""
__version__ = "0.1.0"

_EDGE_API = ("generate", "embed", "tokenize", "default_split", "adapter", "list_models", "run_python",
             "stop", "stats")


def __getattr__(name):
    if name in _EDGE_API:
        from .edge import api
        return getattr(api, name)
    raise AttributeError(f"module 'pyapp' has no attribute {name!r}")
