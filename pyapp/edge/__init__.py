"""The browser edge, in Python (Pyodide): weight streaming into WebGPU, split generation over the
server's WebSocket, the split choice, and the API the page and the console use.

Stdlib only, and every module imports on CPython (the browser-only parts import ``js`` /
``pyodide`` lazily), so the planning logic is tested without a browser.  See docs/edge.md.
"""
