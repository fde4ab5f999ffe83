"""pyapp: split transformer inference between a server and the browser's WebGPU.

In the page (Pyodide), ``import pyapp`` gives the edge API, the same calls as JS's
``window.pyapp`` with snake_case names: ``await pyapp.generate(...)``, ``embed``, ``tokenize``,
``default_split``, ``adapter``, ``list_models`` (JS ``models``: ``pyapp.models`` is the
op-list module), ``list_formats`` (JS ``formats``: ``pyapp.formats`` is the formats module), ``run_python``, ``stop``, ``stats`` (``pyapp/edge/api.py``), ``save_offline``,
``offline_status``, ``remove_offline`` (``pyapp/edge/offline.py``); docs/edge.md.  Loaded on first use so that CPython users of the store, the
numpy executor or the server import nothing of the edge.
"""
__version__ = "0.1.0"

_EDGE_API = ("generate", "embed", "tokenize", "default_split", "adapter", "list_models", "list_formats",
             "run_python", "stop", "stats")
_EDGE_OFFLINE = ("save_offline", "offline_status", "remove_offline")


def __getattr__(name):
    if name in _EDGE_API:
        from .edge import api
        return getattr(api, name)
    if name in _EDGE_OFFLINE:
        from .edge import offline
        return getattr(offline, name)
    raise AttributeError(f"module 'pyapp' has no attribute {name!r}")
