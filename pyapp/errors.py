"""The user-facing error types: each message is one line, shown without a traceback.

Stdlib only and import-free, so every module (store, models, the edge in Pyodide) can
raise them without importing each other.
"""
from __future__ import annotations


class PyappError(Exception):
    """An error meant for the user: its message is one line, shown without a traceback."""


class ConversionError(PyappError):
    """The input could not be read or converted (corrupt, truncated, inconsistent)."""


class UnsupportedArchitecture(PyappError):
    """The input is readable but describes a model family pyapp does not run."""


class UnsupportedFormat(PyappError):
    """A weight format (dtype or block type) pyapp has no entry for."""
