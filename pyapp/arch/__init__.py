"""The architecture registry: one file per architecture, one row each here.

Each architecture module defines
  NAME                 the HF `model_type` it reads
  build(cfg, names)    -> dict of Model fields: sizes and the embed / per-layer / head op lists
  widths(model)        -> {activation name: width} of every linear's output, from the config
                          alone (the browser sizes its GPU buffers before any weight arrives)

Everything that needs to know about architectures (building a Model, GPU shape inference,
which HF folders `pyapp import` accepts, the split chooser, the page) reads this registry.
Adding an architecture: a new file here and a row below (docs/architecture.md).
"""
from __future__ import annotations

from types import ModuleType

from ..errors import UnsupportedArchitecture
from ..models import Model
from . import bert, gemma3, gpt2, llama

ARCHS: dict[str, ModuleType] = {m.NAME: m for m in (llama, bert, gpt2, gemma3)}


def get(model_type) -> ModuleType:
    arch = ARCHS.get(model_type)
    if arch is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHS))}")
    return arch


def _ids(v):
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def build_model(config: dict, tensor_names) -> Model:
    """Model from an HF config dict and the set of tensor names in its safetensors."""
    arch = config.get("model_type")
    names = set(tensor_names)
    parts = get(arch).build(config, names)
    model = Model(arch=arch, config=config, eos_ids=_ids(config.get("eos_token_id")),
                  bos_id=config.get("bos_token_id"), **parts)
    missing = [n for n in model.tensors(model.ops()) if n not in names]
    if missing:
        raise UnsupportedArchitecture(f"{arch} model is missing tensors: {', '.join(missing[:5])}"
                                      + (" ..." if len(missing) > 5 else ""))
    return model


def widths(model: Model) -> dict:
    """{activation: width} of every linear's output, from the architecture's shape rules."""
    return get(model.arch).widths(model)
