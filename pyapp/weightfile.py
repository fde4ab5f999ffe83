"""Model folders on disk: safetensors headers, which file holds which tensor, the Model of a folder.

Stdlib only (the header is JSON after an 8-byte length), so the server and the tests can
plan byte ranges without loading a tensor.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from . import formats
from .arch import build_model

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}


def parse_safetensors_header(raw: bytes):
    """(header dict, data start offset) from the first bytes of a .safetensors file; each
    tensor's entry gains "format": its pyapp.formats name (block files name each tensor's
    ggml type in the metadata), or None."""
    if len(raw) < 8:
        raise ValueError("safetensors file too short")
    n = struct.unpack("<Q", raw[:8])[0]
    if len(raw) < 8 + n:
        raise ValueError(f"need {8 + n} bytes of header, have {len(raw)}")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    for name, info in header.items():   # each tensor's weight format (None: not a weight format)
        info["format"] = formats.tensor_format(info["dtype"], meta.get(name))
    return header, 8 + n


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return parse_safetensors_header(struct.pack("<Q", n) + f.read(n))


def weight_files(model_dir, dtype="f32"):
    """{tensor name: file path} for a store folder (single or sharded safetensors)."""
    d = Path(model_dir)
    fname = formats.weight_file_name(formats.check_tag(dtype))
    index = d / (fname + ".index.json")
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: d / v for k, v in wm.items()}
    f = d / fname
    if not f.exists():
        raise FileNotFoundError(f"{d.name} has no {dtype} weights ({f.name})")
    header, _ = read_safetensors_header(f)
    return {k: f for k in header}


def load_model_dir(model_dir, dtype="f32"):
    """Model (the op lists) from a store folder; reads config.json and headers only."""
    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    return build_model(config, weight_files(d, dtype).keys())


def eos_ids(model_dir, model) -> tuple:
    """The ids generation stops on: config.json's and generation_config.json's, in that order."""
    eos = list(model.eos_ids)
    gp = Path(model_dir) / "generation_config.json"
    if gp.is_file():
        try:
            g = json.loads(gp.read_text()).get("eos_token_id")
        except ValueError:
            g = None
        if g is not None:
            eos += g if isinstance(g, list) else [g]
    return tuple(dict.fromkeys(int(e) for e in eos))


def default_format(model_dir) -> str:
    """The format a model runs in when none is named: the served format (formats.SERVED_TAGS)
    it has with the fewest weight bytes (every tensor once; ties by name), as the edge's
    ``generate`` and ``saveOffline`` choose (pyapp/edge/api.py ``resolve_format``).  Every one
    is u32-packed, so every adapter runs it."""
    d = Path(model_dir)
    sizes = {}
    for tag in formats.SERVED_TAGS:
        try:
            wf = weight_files(d, tag)
        except FileNotFoundError:
            continue
        total = 0
        for p in set(wf.values()):
            header, _ = read_safetensors_header(p)
            total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items()
                         if wf.get(k) == p)
        sizes[tag] = total
    if not sizes:
        raise FileNotFoundError(f"{d.name} has no weight file")
    return min(sizes, key=lambda t: (sizes[t], t))
