"""The numpy executor: the reference every other backend is checked against.

float32 compute on weights of any format in pyapp.formats (f32, f16, q4_1, q8_0, ...):
each tensor is decoded once at load by its format's reference decode.
One sequence at a time; decoder models keep a KV cache per layer.
"""
from __future__ import annotations

import math

import numpy as np

from . import formats
from .kvwire import check_floors, check_handover, window_start
from .models import Model, attention_windows, check_rewind
from .weightfile import load_model_dir, read_safetensors_header, weight_files

F32 = np.float32


class KVCache:
    """Preallocated K/V for a range of decoder layers; `length` tokens are valid.

    A sliding-window layer (window W) keeps a ring of min(capacity, 2W) slots (position p in slot
    p mod size): the W keys its queries see plus W positions of slack, so a rewind of up to W + 1
    tokens still finds every key the next step needs."""

    def __init__(self, model: Model, start: int, stop: int, capacity: int):
        self.model = model
        self.capacity = capacity
        self.windows, self.k, self.v = {}, {}, {}
        self.floors = {}     # layer -> its first valid position, after a hand-over (kvwire)
        self.length = 0
        for i in range(start, stop) if model.causal else ():
            self.add_layer(i)

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.k.values()) + sum(a.nbytes for a in self.v.values())

    def layer_bytes(self, i: int) -> int:
        """What add_layer(i) allocates."""
        w = attention_windows(self.model).get(i)
        slots = min(self.capacity, 2 * w) if w else self.capacity
        return 2 * self.model.n_kv_heads * slots * self.model.head_dim * 4

    def truncate(self, n: int):
        check_rewind(self.length, n, {i: (self.k[i].shape[1], w) for i, w in self.windows.items()})
        check_floors(n, self.floors, self.windows)
        self.length = n
        if n == 0:
            self.floors.clear()

    # ------------------------------------------------------------------ hand-over (pyapp.kvwire)
    def add_layer(self, i: int):
        """Allocate layer i's (empty) K/V: a ring of min(capacity, 2W) slots on a window layer."""
        m = self.model
        w = attention_windows(m).get(i)
        slots = min(self.capacity, 2 * w) if w else self.capacity
        if w:
            self.windows[i] = w
        self.k[i] = np.zeros((m.n_kv_heads, slots, m.head_dim), F32)
        self.v[i] = np.zeros((m.n_kv_heads, slots, m.head_dim), F32)

    def drop_layer(self, i: int):
        for d in (self.k, self.v, self.windows, self.floors):
            d.pop(i, None)

    def read_layer(self, i: int):
        """(p0, K, V): layer i's keys/values [Hkv, length - p0, hd] for positions p0..length-1."""
        p0 = window_start(self.length, self.windows.get(i))
        slots = np.arange(p0, self.length) % self.k[i].shape[1]
        return p0, np.ascontiguousarray(self.k[i][:, slots]), np.ascontiguousarray(self.v[i][:, slots])

    def write_layer(self, i: int, p0: int, k, v):
        """Store K/V [Hkv, n, hd] of positions p0..p0+n-1 (ending at `length`) into layer i."""
        n = k.shape[1]
        check_handover(i, p0, n, self.length, self.windows.get(i))
        slots = np.arange(p0, p0 + n)[-self.k[i].shape[1]:]   # a ring keeps the newest
        self.k[i][:, slots % self.k[i].shape[1]] = k[:, slots - p0]
        self.v[i][:, slots % self.v[i].shape[1]] = v[:, slots - p0]
        if p0:
            self.floors[i] = p0
        else:
            self.floors.pop(i, None)

    def step(self, i: int, pos0: int, k, v):
        """Store the step's k, v [Hkv, T, hd] at positions pos0.. and return (K, V, key positions)
        the step's queries may attend to (the whole prefix, or the window's reach)."""
        T = k.shape[1]
        w = self.windows.get(i)
        if w is None:
            self.k[i][:, pos0:pos0 + T] = k
            self.v[i][:, pos0:pos0 + T] = v
            return self.k[i][:, :pos0 + T], self.v[i][:, :pos0 + T], np.arange(pos0 + T)
        size = self.k[i].shape[1]
        old = np.arange(max(0, pos0 - w + 1), pos0)          # cached positions the first query sees
        K = np.concatenate([self.k[i][:, old % size], k], axis=1)
        V = np.concatenate([self.v[i][:, old % size], v], axis=1)
        keep = np.arange(pos0 + max(0, T - size), pos0 + T)   # the newest `size` positions
        self.k[i][:, keep % size] = k[:, keep - pos0]
        self.v[i][:, keep % size] = v[:, keep - pos0]
        return K, V, np.concatenate([old, np.arange(pos0, pos0 + T)])


def load_weights(model_dir, names, dtype="f32"):
    from safetensors import safe_open

    files = weight_files(model_dir, dtype)
    by_file = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    out = {}
    for path, ns in by_file.items():
        header, _ = read_safetensors_header(path)
        with safe_open(str(path), framework="numpy") as f:
            for n in ns:
                raw = f.get_tensor(n)
                fmt = formats.get(header[n]["format"] or "f32")
                out[n] = np.ascontiguousarray(fmt.decode(raw, fmt.value_shape(raw.shape)), dtype=F32)
    return out


def _rope(x, pos0, theta, head_dim):
    """Rotate-half RoPE (HF Llama layout) on [T, H, hd] at positions pos0..pos0+T-1."""
    T = x.shape[0]
    half = head_dim // 2
    inv = 1.0 / (theta ** (np.arange(0, half, dtype=np.float64) * 2 / head_dim))
    ang = np.arange(pos0, pos0 + T, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(F32)[:, None, :], np.sin(ang).astype(F32)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _softmax(s, axis=-1):
    s = s - s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=axis, keepdims=True)


def _erf(x):
    # float64 erf via math.erf keeps GELU exact to f32 precision
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


class NumpyBackend:
    name = "numpy"

    def __init__(self, model: Model, weights: dict):
        self.model = model
        self.w = weights

    @classmethod
    def load(cls, model_dir, dtype="f32", start=0, stop=None, embed=None, head=None):
        model = load_model_dir(model_dir, dtype)
        ops = model.ops(start, stop, embed=embed, head=head)
        return cls(model, load_weights(model_dir, model.tensors(ops), dtype))

    def new_cache(self, capacity=None, start=0, stop=None):
        stop = self.model.n_layers if stop is None else stop
        capacity = min(capacity or self.model.max_context, self.model.max_context)
        return KVCache(self.model, start, stop, capacity)

    # ------------------------------------------------------------------ forward
    def forward(self, ids=None, x=None, cache=None, start=0, stop=None, head=None,
                all_logits=False, segments=None):
        """Run layers [start, stop) on `ids` (embedding first) or on a hidden state `x`.

        Returns the hidden state [T, D] if the head is not run, else logits
        ([T, V] with all_logits, else [1, V]) or the pooled embedding [1, D].
        `segments` (encoders): the lengths of sequences packed in the T rows; each attends and
        pools only within itself and its positions restart at 0; one embedding row each.
        """
        m = self.model
        stop = m.n_layers if stop is None else stop
        head = (stop == m.n_layers) if head is None else head
        if (ids is None) == (x is None):
            raise ValueError("give exactly one of ids or x")
        env = {}
        if ids is not None:
            if start != 0:
                raise ValueError("token ids enter at layer 0; give x for a later start")
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= m.vocab):
                raise ValueError(f"token id out of range 0..{m.vocab - 1}")
            env["ids"] = ids
            T = ids.size
        else:
            env["x"] = np.ascontiguousarray(x, dtype=F32).reshape(-1, m.hidden)
            T = env["x"].shape[0]
        pos0 = cache.length if (cache is not None and m.causal) else 0
        if m.causal:
            if cache is None:
                raise ValueError("decoder models need a KV cache")
            if pos0 + T > cache.capacity:
                raise ValueError(f"context overflow: {pos0} + {T} tokens > {cache.capacity}")
        seg = None
        if segments is not None:
            lens = [int(n) for n in segments]
            if m.causal or sum(lens) != T or min(lens) <= 0:
                raise ValueError(f"segments {lens} do not pack the {T} rows of an encoder step")
            seg = np.repeat(np.arange(len(lens)), lens)          # the sequence of each row
        longest = T if seg is None else max(lens)
        if not m.causal and pos0 + longest > m.max_context:
            raise ValueError(f"input of {longest} tokens exceeds the context of {m.max_context}")
        ctx = dict(pos0=pos0, cache=cache, seg=seg)
        for o in m.ops(start, stop, embed=ids is not None, head=False):
            self.run_op(o, env, ctx)
        if head:
            if m.causal and not all_logits:
                env["x"] = env["x"][-1:]
            for o in m.head:
                self.run_op(o, env, ctx)
        if m.causal and cache is not None:
            cache.length = pos0 + T
        if not head:
            return env["x"]
        return env["logits"] if m.causal else env["embedding"]

    # ------------------------------------------------------------------ ops
    def run_op(self, o, env, ctx):
        w = {role: (self.w[n] if n is not None else None) for role, n in o.weights.items()}
        a = o.attrs
        ins = [env[n] for n in o.ins]
        k = o.kind
        if k == "embed":
            ids = ins[0]
            y = w["tokens"][ids]
            if w.get("positions") is not None:
                p0, seg = ctx["pos0"], ctx.get("seg")
                if seg is None:
                    y = y + w["positions"][p0:p0 + ids.size]
                else:        # positions restart in each packed sequence
                    starts = np.searchsorted(seg, seg, side="left")
                    y = y + w["positions"][np.arange(ids.size) - starts]
            if w.get("token_type") is not None:
                y = y + w["token_type"][0]
            out = [y.astype(F32)]
        elif k == "rms_norm":
            x = ins[0]
            shape = x.shape
            if a.get("group"):
                x = x.reshape(-1, a["group"])
            ms = np.mean(x * x, axis=-1, keepdims=True)
            scale = w["w"] + F32(a["offset"]) if a.get("offset") else w["w"]
            out = [((x / np.sqrt(ms + F32(a["eps"]))) * scale).reshape(shape)]
        elif k == "scale":
            out = [ins[0] * F32(a["value"])]
        elif k == "layer_norm":
            x = ins[0]
            mu = x.mean(axis=-1, keepdims=True)
            var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
            out = [(x - mu) / np.sqrt(var + F32(a["eps"])) * w["w"] + w["b"]]
        elif k == "linear":
            W = w["w"]
            y = ins[0] @ (W if a.get("transposed") else W.T)
            if w.get("b") is not None:
                y = y + w["b"]
            out = [y]
        elif k == "split":
            out, c = [], 0
            for s in a["sizes"]:
                out.append(np.ascontiguousarray(ins[0][:, c:c + s]))
                c += s
        elif k == "rope":
            q, kk = ins
            T, hd = q.shape[0], a["head_dim"]
            qr = _rope(q.reshape(T, a["n_heads"], hd), ctx["pos0"], a["theta"], hd)
            kr = _rope(kk.reshape(T, a["n_kv_heads"], hd), ctx["pos0"], a["theta"], hd)
            out = [qr.reshape(T, -1), kr.reshape(T, -1)]
        elif k == "attention":
            out = [self._attention(*ins, a, ctx)]
        elif k == "silu_mul":
            g, u = ins
            out = [g / (F32(1) + np.exp(-g)) * u]
        elif k == "gelu":
            x = ins[0]
            out = [(0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(F32)]
        elif k == "gelu_tanh":
            x = ins[0]
            c = F32(math.sqrt(2.0 / math.pi))
            out = [F32(0.5) * x * (F32(1) + np.tanh(c * (x + F32(0.044715) * x * x * x)))]
        elif k == "gelu_tanh_mul":
            g, u = ins
            c = F32(math.sqrt(2.0 / math.pi))
            out = [F32(0.5) * g * (F32(1) + np.tanh(c * (g + F32(0.044715) * g * g * g))) * u]
        elif k == "add":
            out = [ins[0] + ins[1]]
        elif k == "mean_pool":
            seg = ctx.get("seg")
            x = ins[0]
            out = [x.mean(axis=0, keepdims=True) if seg is None else
                   np.stack([x[seg == b].mean(axis=0) for b in range(int(seg[-1]) + 1)])]
        elif k == "l2_normalize":
            x = ins[0]
            n = np.sqrt((x * x).sum(axis=-1, keepdims=True))
            out = [x / np.maximum(n, F32(1e-12))]
        else:
            raise NotImplementedError(f"op {k!r}")
        for name, val in zip(o.outs, out):
            env[name] = np.asarray(val, dtype=F32)

    def _attention(self, q, k, v, a, ctx):
        H, Hkv, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
        T = q.shape[0]
        q = q.reshape(T, H, hd).transpose(1, 0, 2)            # [H, T, hd]
        k = k.reshape(T, Hkv, hd).transpose(1, 0, 2)          # [Hkv, T, hd]
        v = v.reshape(T, Hkv, hd).transpose(1, 0, 2)
        pos0 = 0
        if a["causal"]:
            pos0 = ctx["pos0"]
            k, v, kpos = ctx["cache"].step(a["layer"], pos0, k, v)
        group = H // Hkv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        s = (q @ k.transpose(0, 2, 1)) * F32(a["scale"])       # [H, T, S]
        if a["causal"]:
            qpos = np.arange(pos0, pos0 + T)[:, None]
            seen = kpos[None, :] <= qpos
            if a.get("window"):
                seen &= kpos[None, :] > qpos - a["window"]
            s = np.where(seen, s, -np.inf)
        elif ctx.get("seg") is not None:    # packed sequences: attend within one's own only
            seg = ctx.get("seg")
            s = np.where(seg[:, None] == seg[None, :], s, -np.inf)
        y = _softmax(s) @ v                                    # [H, T, hd]
        return y.transpose(1, 0, 2).reshape(T, H * hd)
