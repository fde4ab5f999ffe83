"""`pyapp synth`: a model of any size with random weights, for tests and benchmarks.

From an HF config of a supported architecture alone it derives every tensor (names from the
architecture's own `build`, shapes from the GPU shape rules `pyapp.gpu.shapes`), draws random
values scaled so activations stay finite over many layers, and streams them to disk a block
of rows at a time: the process never holds more than one block (`BLOCK_BYTES`), whatever the
model's size.  With a real model's config the tensors have that model's exact names and shapes.

Values (seeded per tensor, so any tensor can be regenerated alone):
  linear weights  N(0, 1/fan_in): each output keeps its input's variance
  biases          N(0, 0.02^2)
  embeddings      N(0, 1/hidden): a tied head then gives logits of unit variance
  norm weights    the identity scale (1, or 0 where the norm multiplies by 1 + w)
"""
from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np

from . import formats
from .arch import build_model, get as get_arch
from .convert import SafetensorsWriter, _finish_meta, _log, _model_lock, _user_errors
from .gpu.shapes import infer_shapes
from .models import Model
from .store import PyappError, atomic_model_dir, model_path, validate_name

SYNTH_DTYPES = ("f32", "f16", "q4_1", "q8_0")
BLOCK_BYTES = 16 << 20          # f32 bytes of rows drawn, converted and written at once
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")
TIED_DEFAULT = {"llama": False, "gpt2": True, "gemma3_text": True, "bert": False}


class _Every:
    """A tensor-name set that holds every name: an architecture's `build` then names all the
    tensors it can read, optional ones included (filtered by `_keep`)."""

    def __contains__(self, name) -> bool:
        return True


def _keep(cfg: dict, name: str) -> bool:
    """Whether an optional tensor exists for this config (HF's own switches)."""
    arch = cfg.get("model_type")
    if name == "lm_head.weight":
        return not cfg.get("tie_word_embeddings", TIED_DEFAULT.get(arch, True))
    if arch == "llama" and name.endswith(".bias"):
        return bool(cfg.get("mlp_bias" if ".mlp." in name else "attention_bias"))
    return True


def synth_model(cfg: dict) -> Model:
    """The Model (op lists, tensor names) an HF config describes, before any weight exists."""
    parts = get_arch(cfg.get("model_type")).build(cfg, _Every())
    ops = parts["embed"] + [o for layer in parts["layers"] for o in layer] + parts["head"]
    names = [n for o in ops for n in o.tensor_names() if _keep(cfg, n)]
    return build_model(cfg, names)


def tensor_plan(model: Model, dtype: str) -> list[tuple[str, tuple, str, str, float]]:
    """[(name, value shape, format, init, scale)] of every tensor, in op order; init is
    "normal" (N(0, scale^2)) or "const" (every value = scale)."""
    from .convert import quantize_plan

    shapes = infer_shapes(model)
    quant = quantize_plan(model, dtype) if formats.get(dtype).quantized else {}
    roles = {}
    for o in model.ops():
        w = o.weights
        if o.kind == "embed":
            for r in ("tokens", "positions", "token_type"):
                if w.get(r):
                    roles.setdefault(w[r], ("normal", model.hidden ** -0.5))
        elif o.kind == "linear":
            shape = shapes[w["w"]]
            fan_in = shape[0] if o.attrs.get("transposed") else shape[1]
            roles.setdefault(w["w"], ("normal", fan_in ** -0.5))
            if w.get("b"):
                roles.setdefault(w["b"], ("normal", 0.02))
        elif o.kind in ("rms_norm", "layer_norm"):
            roles.setdefault(w["w"], ("const", 1.0 - o.attrs.get("offset", 0.0)))
            if w.get("b"):
                roles.setdefault(w["b"], ("const", 0.0))
    plan = []
    for name in model.tensors(model.ops()):
        shape = tuple(shapes[name])
        fmt = quant.get(name, "f32") if quant else dtype
        if formats.get(fmt).quantized and (len(shape) != 2 or shape[1] % formats.get(fmt).block):
            fmt = "f32"
        plan.append((name, shape, fmt) + roles[name])
    return plan


def _blocks(name: str, shape: tuple, init: str, scale: float, seed: int):
    """(row0, f32 rows) of one tensor, `BLOCK_BYTES` at a time; the values depend only on
    (seed, name), not on the order tensors are written in."""
    rows = shape[0]
    cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    per = max(1, BLOCK_BYTES // (4 * cols))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    for r0 in range(0, rows, per):
        n = min(per, rows - r0)
        if init == "const":
            a = np.full((n, cols), scale, np.float32)
        else:
            a = rng.standard_normal((n, cols), dtype=np.float32)
            a *= np.float32(scale)
        yield r0, a.reshape((n,) + tuple(shape[1:]))


def _encode(a: np.ndarray, fmt: str) -> np.ndarray:
    """f32 rows -> the stored rows of `fmt` (blocks as uint8 [rows, row_bytes])."""
    f = formats.get(fmt)
    if not f.quantized:
        return a.astype(np.float16) if fmt == "f16" else a
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    return quantize(a, GGMLQuantizationType(f.ggml_type))


def write_weights(path: Path, plan, dtype: str, seed: int) -> int:
    """Stream every tensor of `plan` into one safetensors file; returns its data bytes."""
    specs = [(n, formats.get(f).st_dtype, formats.get(f).stored_shape(s)) for n, s, f, _i, _c in plan]
    meta = {"format": "pt", "synthetic": "true", "seed": str(seed)}
    if formats.get(dtype).quantized:
        meta.update({n: f.upper() for n, _s, f, _i, _c in plan})
        meta["__layout__"] = "ggml blocks as uint8 [rows, bytes_per_row]; value is the ggml type of each tensor"
    total = 0
    with SafetensorsWriter(path, specs, meta) as w:
        for name, shape, fmt, init, scale in plan:
            for r0, a in _blocks(name, shape, init, scale, seed):
                w.write_rows(name, r0, _encode(a, fmt))
            total += formats.get(fmt).nbytes(shape)
    return total


def _tokenizer_dir(source: str) -> Path:
    p = Path(source)
    return p if p.is_dir() else model_path(source)


def _check_vocab(tok_json: Path, vocab: int) -> None:
    """Refuse a tokenizer whose ids do not fit the config's vocabulary."""
    t = json.loads(tok_json.read_text(encoding="utf-8"))
    v = (t.get("model") or {}).get("vocab") or {}
    ids = list(v.values()) if isinstance(v, dict) else [len(v) - 1]   # BPE/WordPiece | unigram list
    ids += [a.get("id", 0) for a in t.get("added_tokens") or []] + [0]
    top = max(int(i) for i in ids)
    if top >= vocab:
        raise PyappError(f"the tokenizer has token id {top}, beyond the config's vocab_size {vocab}")


def synth(name: str, config_path, dtype: str = "f32", seed: int = 0, tokenizer_from: str | None = None) -> Path:
    """Write model `name` into the store with random weights for the HF config at `config_path`."""
    t0 = time.perf_counter()
    validate_name(name)
    if dtype not in SYNTH_DTYPES:
        raise PyappError(f"--dtype must be one of {', '.join(SYNTH_DTYPES)}")
    try:
        cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PyappError(f"cannot read config {config_path}: {e}") from None
    if not isinstance(cfg, dict):
        raise PyappError(f"{config_path} is not a JSON object")
    model = synth_model(cfg)
    plan = tensor_plan(model, dtype)
    tok = _tokenizer_dir(tokenizer_from) if tokenizer_from else None
    if tok is not None and (tok / "tokenizer.json").is_file():
        _check_vocab(tok / "tokenizer.json", model.vocab)
    with _model_lock(name), _user_errors(f"synth {name}"), atomic_model_dir(name) as out:
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        nbytes = write_weights(out / formats.weight_file_name(dtype), plan, dtype, seed)
        copied = []
        for f in TOKENIZER_FILES if tok is not None else ():
            if (tok / f).is_file():
                shutil.copyfile(tok / f, out / f)
                copied.append(f)
        _finish_meta(out, {"source": "synth", "synthetic": True, "format": "synth",
                           "architecture": model.arch, "dtypes": [dtype], "seed": seed,
                           "weight_bytes": nbytes, "tokenizer_from": tokenizer_from,
                           "tokenizer_files": copied}, t0)
    _log(f"{name}: {len(plan)} tensors, {nbytes / 1e9:.2f} GB of {dtype} weights (synthetic)")
    return model_path(name)
