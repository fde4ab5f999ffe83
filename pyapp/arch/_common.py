"""Helpers shared by the architecture files: tensor-name probing."""
from __future__ import annotations

from ..errors import UnsupportedArchitecture as UnsupportedModel


def prefix(names, candidates, probe):
    """The first name prefix under which `probe` exists (HF checkpoints vary: "model.", "bert.")."""
    for p in candidates:
        if p + probe in names:
            return p
    raise UnsupportedModel(f"cannot find tensor {probe!r} under any of {candidates}")


def maybe(names, name):
    """`name` if the checkpoint has it, else None (optional biases, token types)."""
    return name if name in names else None
