"""The WebGPU executor (buffers, caches, steps), shared by both bindings; stdlib-only
(numpy is imported lazily, and only by the CPython conveniences `load` / `forward`).
Ops become dispatches in `lower.py`; kernel variants come from `autotune.py`.

Design (see docs/gpu.md):
* weights live in GPU buffers, one or more per tensor (tensors larger than the
  device's max storage binding are split by rows into chunks);
* activations are named buffers sized for `max_tokens` rows, allocated once;
* the KV cache is preallocated per layer on the GPU (`new_cache`);
* every op compiles to dispatches of a WGSL kernel specialised by shape
  (pipelines cached by source); bind groups are built once; the dispatch list
  of a step is recorded once per (token count, flags, cache) and replayed;
* one command encoder, one compute pass and one submit per forward step; the
  dynamic values (token count, position, sampling) are one 512-byte uniform
  written once per step; the only readback is the result (one u32 for `step`).
"""
from __future__ import annotations

import math
import struct
from array import array

from .. import formats, kernels
from ..models import Model
from . import lower
from .data import byte_slice, hidden_rows, id_list, nbytes as data_nbytes
from .device import Device, GpuError
from .shapes import infer_shapes, widths_from_shapes

PARAMS_HEAD = 256            # offset of the head's params (T = 1) in the uniform buffer
UNIFORM_BYTES = 512


class Tensor:
    """One weight: `shape` in values, `dtype` its format name, stored as the format's raw
    little-endian bytes in one or more GPU buffers (row ranges)."""

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self.nbytes = formats.get(dtype).nbytes(self.shape)
        self.chunks = []     # [buffer, row0, rows, byte0, nbytes]


class GpuKVCache:
    """Per-layer K/V buffers [Hkv, capacity, hd] on the GPU; `length` tokens valid."""

    def __init__(self, backend, start, stop, capacity):
        m = backend.model
        self.capacity = capacity
        self.length = 0
        self.k, self.v = {}, {}
        nb = m.n_kv_heads * capacity * m.head_dim * 4
        if m.causal:
            for i in range(start, stop):
                self.k[i] = backend.device.create_buffer(nb)
                self.v[i] = backend.device.create_buffer(nb)
        self.nbytes = 2 * nb * len(self.k)
        self.plans = {}      # step key -> recorded dispatches over this cache's buffers
        self.groups = {}     # bind groups that hold this cache's buffers (built with the plans)
        self.buffer_ids = {id(b) for b in list(self.k.values()) + list(self.v.values())}

    def truncate(self, n):
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {n}")
        self.length = n

    def destroy(self):
        """Free the K/V buffers now (they also go with the cache object: the backend keeps
        no reference to them)."""
        for b in list(self.k.values()) + list(self.v.values()):
            b.destroy()
        self.k, self.v, self.plans, self.groups, self.buffer_ids = {}, {}, {}, {}, set()


# ----------------------------------------------------------------------------- backend

class GpuBackend:
    name = "wgpu"

    def __init__(self, device: Device, model: Model, start=0, stop=None, embed=None, head=None,
                 dtype="f32", shapes=None, dtypes=None, max_tokens=None, max_positions=None,
                 variants=None, max_binding=None, widths=None):
        self.device = device
        self.model = model
        self.start = start
        self.stop = model.n_layers if stop is None else stop
        self.embed = (start == 0) if embed is None else embed
        self.head = (self.stop == model.n_layers) if head is None else head
        self.ops = model.ops(self.start, self.stop, embed=self.embed, head=self.head)
        self.dtype = dtype
        shapes = dict(shapes) if shapes is not None else infer_shapes(model)
        self.widths = widths_from_shapes(model, shapes, widths or {})
        self.max_positions = max_positions or min(model.max_context, 2048)
        self.max_tokens = max_tokens or min(self.max_positions, 512)
        self.max_binding = min(max_binding or 1 << 62, device.limits["max_storage_binding"],
                               device.limits["max_buffer"])
        self.variants = {"linear": "row", "norm_wg": 1, "attention": "row"}
        if variants:
            self.variants.update(variants)
        self.stats = {"steps": 0, "dispatches": 0, "submits": 0, "readbacks": 0,
                      "plans_built": 0}
        # weights
        self.tensors = {}
        for n in model.tensors(self.ops):
            dt = formats.get((dtypes or {}).get(n, dtype)).name
            t = self.tensors[n] = Tensor(n, shapes[n], dt)
            # any matrix may be split by rows; lower.py addresses the chunks (gathers, GEMVs over
            # output rows, transposed GEMVs over input rows, position tables)
            self._alloc(t, len(t.shape) == 2)
        # activations, ids, params, rope table, output token
        self.acts = {}
        for o in self.ops:
            for n in list(o.ins) + list(o.outs):
                if n not in self.acts and n not in ("ids", "logits"):
                    self.acts[n] = device.create_buffer(self.max_tokens * self.widths[n] * 4)
        self.ids_buf = device.create_buffer(self.max_tokens * 4)
        # encoders: the segment table of packed steps (lower.seg_decl): 2 u32 per row + per sequence
        self.seg_buf = None if model.causal else device.create_buffer(self.max_tokens * 16)
        self.params = device.create_buffer(UNIFORM_BYTES, "uniform")
        self.logit_rows = 0
        self.logits = None
        self._groups = {}             # bind groups over the backend's own buffers
        self._enc_plans = {}          # plans of cache-less steps (encoders)
        self._planning = None         # the cache whose plan is being built
        self._gen = 0                 # bumped when buffers change: cached plans are stale
        if model.causal and self.head:
            self._grow_logits(1)
        self.tok_buf = device.create_buffer(16)
        self.readback = device.create_buffer(16, "readback")
        self.rope_buf = None
        if any(o.kind == "rope" for o in self.ops):
            self._upload_rope()

    # ------------------------------------------------------------------ weights
    def _alloc(self, t: Tensor, splittable):
        if not splittable and t.nbytes > self.max_binding:
            raise GpuError(f"{t.name}: {t.nbytes} bytes exceed the device's binding limit "
                           f"{self.max_binding} and cannot be split")
        if len(t.shape) == 1 or t.nbytes <= self.max_binding:
            rows = t.shape[0]
            t.chunks.append([self.device.create_buffer(t.nbytes), 0, rows, 0, t.nbytes])
            return
        rows, rb = t.shape[0], t.nbytes // t.shape[0]
        per = self.max_binding // rb
        while per > 0 and (per * rb) % 4:       # chunks start on 4-byte boundaries
            per -= 1
        if per < 1:
            raise GpuError(f"{t.name}: one row of {rb} bytes exceeds the binding limit")
        r0 = 0
        while r0 < rows:
            n = min(per, rows - r0)
            t.chunks.append([self.device.create_buffer(n * rb), r0, n, r0 * rb, n * rb])
            r0 += n

    def weight_layout(self):
        """[(tensor name, nbytes)] in upload order (the dtype's raw little-endian bytes)."""
        return [(n, t.nbytes) for n, t in self.tensors.items()]

    def write_weight(self, name, byte_offset, data, nbytes=None):
        """Write `data` (numpy / memoryview natively; a JS Uint8Array proxy in the
        browser, never turned into Python bytes) at `byte_offset` of tensor `name`.
        Offsets and lengths should be multiples of 4."""
        t = self.tensors[name]
        if nbytes is None:
            nbytes = data_nbytes(data)
        end = byte_offset + nbytes
        if byte_offset < 0 or end > t.nbytes + 3:
            raise ValueError(f"{name}: bytes [{byte_offset}, {end}) outside its {t.nbytes}")
        for buf, _r0, _n, b0, nb in t.chunks:
            last = b0 + nb == t.nbytes          # the tensor may end off a 4-byte boundary
            lo, hi = max(byte_offset, b0), min(end, b0 + nb + (3 if last else 0))
            if lo >= hi:
                continue
            part = data if (lo == byte_offset and hi == end) else byte_slice(data, lo - byte_offset, hi - byte_offset)
            self.device.write(buf, lo - b0, part)

    def _upload_rope(self):
        rope = next(o for o in self.ops if o.kind == "rope")
        hd, theta = rope.attrs["head_dim"], rope.attrs["theta"]
        half = hd // 2
        inv = [1.0 / (theta ** (i * 2 / hd)) for i in range(half)]
        tab = array("f")
        for pos in range(self.max_positions):
            for f in inv:
                a = pos * f
                tab.append(math.cos(a))
                tab.append(math.sin(a))
        self.rope_buf = self.device.create_buffer(len(tab) * 4)
        self.device.write(self.rope_buf, 0, tab)

    def _grow_logits(self, rows):
        if rows <= self.logit_rows:
            return
        self.logit_rows = rows
        self.logits = self.device.create_buffer(rows * self.model.vocab * 4)
        self._enc_plans.clear()
        self._groups.clear()
        self._gen += 1

    # ------------------------------------------------------------------ caches
    def new_cache(self, capacity=None, start=None, stop=None):
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        capacity = min(capacity or self.max_positions, self.max_positions)
        return GpuKVCache(self, start, stop, capacity)

    # ------------------------------------------------------------------ dispatches
    def _group(self, pipe, src, entries):
        """The bind group of (pipeline source, entries), built once: kept on the cache being
        planned when it holds that cache's buffers (so it dies with the cache), else here."""
        key = (src, tuple((b, id(r[0]) if isinstance(r, tuple) else id(r),
                           r[1:] if isinstance(r, tuple) else ()) for b, r in sorted(entries.items())))
        c = self._planning
        store = self._groups
        if c is not None and any(k[1] in c.buffer_ids for k in key[1]):
            store = c.groups
        g = store.get(key)
        if g is None:
            g = store[key] = (self.device.bind_group(pipe, entries), entries)
        return g[0]

    def dispatch(self, src, entries, gx, gy=1, gz=1, head=False):
        """One dispatch: pipeline from source, bind group (binding 0 = params)."""
        pipe = self.device.pipeline(src)
        ent = dict(entries)
        ent[0] = (self.params, PARAMS_HEAD if head else 0, 32)
        return (pipe, self._group(pipe, src, ent), gx, gy, gz)

    def act(self, name):
        return self.logits if name == "logits" else self.acts[name]

    def _plan(self, T, cache, start, stop, embed, head, all_logits, sample, segs=0):
        """The recorded dispatch list of one step; built once per key, replayed."""
        key = (T, start, stop, embed, head, all_logits, sample, segs, self._gen)
        plans = cache.plans if cache is not None else self._enc_plans
        rec = plans.get(key)
        if rec is not None:
            return rec
        m = self.model
        self._planning = cache
        try:
            disp = lower.lower(self, m.ops(start, stop, embed=embed, head=False), lower.Step(T, cache, segs=segs))
            if head:
                last = m.causal and not all_logits
                disp += lower.lower(self, list(m.head), lower.Step(T, cache, head=last, segs=segs),
                                    head_first_row=last)
                if sample:
                    src = kernels.render("sample", V=m.vocab)
                    disp.append(self.dispatch(src, {1: self.logits, 2: self.tok_buf}, 1, head=True))
        finally:
            self._planning = None
        rec = (self.device.record(disp), len(disp))
        plans[key] = rec
        self.stats["plans_built"] += 1
        return rec

    # ------------------------------------------------------------------ steps
    def _params(self, T, pos0, sp=None, n=0):
        greedy, temp, top_k, top_p, seed = 1, 1.0, 0, 1.0, 0
        if sp is not None and not sp.greedy:
            greedy, temp, top_k, top_p, seed = 0, sp.temperature, sp.top_k, sp.top_p, sp.seed
        main = struct.pack("<6I2f", T, pos0, seed & 0xFFFFFFFF, n & 0xFFFFFFFF, top_k, greedy, temp, top_p)
        headp = struct.pack("<6I2f", 1, pos0 + T - 1, seed & 0xFFFFFFFF, n & 0xFFFFFFFF, top_k, greedy,
                            temp, top_p)
        return main + b"\0" * (PARAMS_HEAD - len(main)) + headp + b"\0" * (UNIFORM_BYTES - PARAMS_HEAD - len(headp))

    def _prepare(self, ids, x, cache, start, stop, head, all_logits, sample, sp=None, n=0, segments=None):
        """Validate, write inputs + params, return (recording, T, pos0, head, writes).
        ``segments``: encoders only, the lengths of the sequences packed in ids/x (in order)."""
        m = self.model
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        if start < self.start or stop > self.stop:
            raise ValueError(f"layers [{start}, {stop}) are not on this backend ([{self.start}, {self.stop}))")
        head = (stop == m.n_layers) if head is None else head
        if head and not self.head:
            raise ValueError("this backend was built without the head")
        if (ids is None) == (x is None):
            raise ValueError("give exactly one of ids or x")
        writes = []
        if ids is not None:
            if start != 0 or not self.embed:
                raise ValueError("token ids enter at layer 0; give x for a later start")
            ids = [int(i) for i in id_list(ids)]
            T = len(ids)
            if any(i < 0 or i >= m.vocab for i in ids):
                raise ValueError(f"token id out of range 0..{m.vocab - 1}")
            writes.append((self.ids_buf, 0, array("I", ids)))
        else:
            data, T = hidden_rows(x, m.hidden)
            writes.append((self.acts["x"], 0, data))
        if T == 0:
            raise ValueError("empty step")
        if T > self.max_tokens:
            raise ValueError(f"{T} tokens in one step > max_tokens {self.max_tokens}")
        pos0 = cache.length if (cache is not None and m.causal) else 0
        if m.causal:
            if cache is None:
                raise ValueError("decoder models need a KV cache")
            if pos0 + T > cache.capacity:
                raise ValueError(f"context overflow: {pos0} + {T} tokens > {cache.capacity}")
        segs = self._segments(segments, T, writes)
        if not segs and not m.causal and T > m.max_context:
            raise ValueError(f"input of {T} tokens exceeds the context of {m.max_context}")
        if head and m.causal and all_logits:
            self._grow_logits(T)
        rec, nd = self._plan(T, cache, start, stop, ids is not None, head, all_logits, sample, segs)
        writes.append((self.params, 0, self._params(T, pos0, sp, n)))
        self.stats["steps"] += 1
        self.stats["dispatches"] += nd
        self.stats["submits"] += 1
        return rec, T, pos0, head, writes

    def _segments(self, segments, T, writes):
        """Packed sequences: their count (0 for one), the segment table queued in ``writes``."""
        if segments is None or len(segments) <= 1:
            if segments is not None and sum(segments) != T:
                raise ValueError(f"segments {list(segments)} do not add up to the {T} rows")
            return 0
        m = self.model
        if m.causal:
            raise ValueError("packed sequences are for encoders (decoders keep a KV cache per sequence)")
        lens = [int(n) for n in segments]
        if sum(lens) != T or min(lens) <= 0:
            raise ValueError(f"segments {lens} do not add up to the {T} rows")
        if max(lens) > m.max_context:
            raise ValueError(f"input of {max(lens)} tokens exceeds the context of {m.max_context}")
        rows, table, a = [], [], 0
        for n in lens:
            rows += [a, a + n] * n
            table += [a, a + n]
            a += n
        writes.append((self.seg_buf, 0, array("I", rows + [0] * (2 * (self.max_tokens - T)) + table)))
        return len(lens)

    def _submit_forward(self, ids, x, cache, start, stop, head, all_logits, segments=None):
        """Encode and submit one forward step; (buffer, rows, width) of what it produced:
        the hidden state [T, D], logits [rows, V] or the pooled embedding [1, D] (one row per
        packed sequence)."""
        m = self.model
        rec, T, pos0, head, writes = self._prepare(ids, x, cache, start, stop, head, all_logits, False,
                                                   segments=segments)
        self.device.submit(rec, writes)
        if m.causal and cache is not None:
            cache.length = pos0 + T
        self.stats["readbacks"] += 1
        if not head:
            return self.acts["x"], T, m.hidden
        if m.causal:
            return self.logits, (T if all_logits else 1), m.vocab
        emb = next(o for o in m.head if o.kind == "l2_normalize").outs[0]
        return self.acts[emb], max(1, len(segments or ())), m.hidden

    def forward(self, ids=None, x=None, cache=None, start=None, stop=None, head=None, all_logits=False,
                segments=None):
        """CPython convenience mirroring NumpyBackend.forward; returns numpy arrays."""
        import numpy as np

        buf, rows, w = self._submit_forward(ids, x, cache, start, stop, head, all_logits, segments)
        return np.frombuffer(self.device.read(buf, 0, rows * w * 4), np.float32).reshape(rows, w).copy()

    async def forward_async(self, ids=None, x=None, cache=None, start=None, stop=None, head=None,
                            all_logits=False, segments=None):
        """forward() for the browser: the same result, row-major in one flat array('f'),
        after awaiting the readback (activations, not weights: small)."""
        buf, rows, w = self._submit_forward(ids, x, cache, start, stop, head, all_logits, segments)
        raw = await self.device.read_async(buf, 0, rows * w * 4)
        return array("f", bytes(raw))

    async def read_activation_async(self, name, rows):
        w = self.model.vocab if name == "logits" else self.widths[name]
        return array("f", bytes(await self.device.read_async(self.act(name), 0, rows * w * 4)))

    @property
    def gpu_bytes(self):
        n = sum(c[4] for t in self.tensors.values() for c in t.chunks)
        n += sum(self.max_tokens * self.widths[k] * 4 for k in self.acts)
        n += self.logit_rows * self.model.vocab * 4
        return n

    def destroy(self):
        """Free the GPU buffers now (the browser keeps them until GC otherwise)."""
        bufs = [c[0] for t in self.tensors.values() for c in t.chunks] + list(self.acts.values())
        bufs += [b for b in (self.logits, self.rope_buf, self.ids_buf, self.params, self.tok_buf,
                             self.readback, self.seg_buf) if b is not None]
        for b in bufs:
            try:
                b.destroy()
            except Exception:  # noqa: BLE001
                pass
        self.tensors, self.acts = {}, {}
        self._groups.clear()
        self._enc_plans.clear()

    def _step_submit(self, ids, x, cache, params, n, start, stop):
        from ..sampling import SamplingParams

        params = params or SamplingParams()
        if not self.model.causal:
            raise ValueError("step() needs a decoder model")
        # a prompt longer than the activation buffers is prefilled in chunks
        ids, x = self._prefill_chunks(ids, x, cache, start, stop)
        rec, T, pos0, _h, writes = self._prepare(ids, x, cache, start, stop, True, False, True, params, n)
        self.device.submit(rec, writes, copy=(self.tok_buf, 0, self.readback, 0, 4))
        cache.length = pos0 + T
        self.stats["readbacks"] += 1

    def _prefill_chunks(self, ids, x, cache, start, stop):
        """Run all but the last `max_tokens` rows (KV cache only); return the rest."""
        mt = self.max_tokens
        if ids is not None:
            ids = [int(i) for i in id_list(ids)]
            while len(ids) > mt:
                rec, T, pos0, _h, writes = self._prepare(ids[:mt], None, cache, start, stop, False, False, False)
                self.device.submit(rec, writes)
                cache.length = pos0 + T
                ids = ids[mt:]
            return ids, None
        data, T = hidden_rows(x, self.model.hidden)
        D = self.model.hidden
        while T > mt:
            head_rows = data.subarray(0, mt * D) if hasattr(data, "subarray") else data[:mt]
            if isinstance(data, array):
                head_rows = data[:mt * D]
            rec, t, pos0, _h, writes = self._prepare(None, head_rows, cache, start, stop, False, False, False)
            self.device.submit(rec, writes)
            cache.length = pos0 + t
            data = data.subarray(mt * D) if hasattr(data, "subarray") else (
                data[mt * D:] if isinstance(data, array) else data[mt:])
            T -= mt
        return None, data

    def step(self, ids=None, x=None, cache=None, params=None, n=0, start=None, stop=None):
        """Forward + head + GPU sampling; reads back one u32 (native binding)."""
        self._step_submit(ids, x, cache, params, n, start, stop)
        return struct.unpack("<I", self.device.read(self.readback, 0, 4))[0]

    async def step_async(self, ids=None, x=None, cache=None, params=None, n=0, start=None, stop=None):
        """The same, awaiting the readback (the browser binding's mapAsync)."""
        self._step_submit(ids, x, cache, params, n, start, stop)
        return struct.unpack("<I", bytes(await self.device.read_async(self.readback, 0, 4)))[0]

    # ------------------------------------------------------------------ test / bench hooks
    def poison(self, value=float("nan")):
        """Fill every activation buffer (and the logits) with `value`: a kernel that
        leaves part of its output unwritten then shows as NaN."""
        bufs = list(self.acts.items()) + ([("logits", self.logits)] if self.logits is not None else [])
        for name, buf in bufs:
            rows = self.logit_rows if name == "logits" else self.max_tokens
            width = self.model.vocab if name == "logits" else self.widths[name]
            self.device.write(buf, 0, array("f", [value]) * (rows * width))

    def read_activation(self, name, rows):
        import numpy as np
        w = self.model.vocab if name == "logits" else self.widths[name]
        raw = self.device.read(self.act(name), 0, rows * w * 4)
        return np.frombuffer(raw, np.float32).reshape(rows, w).copy()

    def sample_logits(self, logits, params, n=0):
        """Run only the GPU sampler on a given logits row (tests and benchmarks)."""
        self.device.write(self.logits, 0, array("f", [float(v) for v in logits]))
        src = kernels.render("sample", V=self.model.vocab)
        rec = self.device.record([self.dispatch(src, {1: self.logits, 2: self.tok_buf}, 1, head=True)])
        self.device.submit(rec, [(self.params, 0, self._params(1, 0, params, n))],
                           copy=(self.tok_buf, 0, self.readback, 0, 4))
        return struct.unpack("<I", self.device.read(self.readback, 0, 4))[0]

    # ------------------------------------------------------------------ loading (CPython)
    @classmethod
    def load(cls, model_dir, dtype="f32", start=0, stop=None, embed=None, head=None, device=None,
             autotune=True, **kw):
        """Read config + safetensors (any weight file tag: f32, f16, q4_1, q8_0; each tensor
        in its own format) and upload with queue.writeBuffer (native binding)."""
        from .loading import load_backend
        return load_backend(cls, model_dir, dtype, start, stop, embed, head, device, autotune, **kw)
