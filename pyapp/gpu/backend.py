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
* one command encoder, one compute pass and one submit per forward step (a step-by-step
  token's pass cut into a few, SUBMIT_CHUNKS, so the GPU starts before it is all encoded); the
  dynamic values (token count, position, sampling) are one 512-byte uniform
  written once per step; the only readback is the result (one u32 for `step`).
"""
from __future__ import annotations

import math
import struct
from array import array

from .. import formats, kernels
from ..kvwire import check_floors, check_handover, ring_runs, window_start
from ..models import Model, attention_windows, check_rewind
from . import lower
from .data import byte_slice, hidden_rows, id_list, nbytes as data_nbytes
from .device import Device, GpuError, chunk_ends, cpu_adapter
from .shapes import infer_shapes, widths_from_shapes

ON_GPU = "on-gpu"             # `ids` of a pipelined step: the token the last step's sampler left in tok_buf
PARAMS_HEAD = 256            # offset of the head's params (T = 1) in the uniform buffer
UNIFORM_BYTES = 512
# rows per weight chunk: a GEMV variant with one output row per workgroup (`wg`) dispatches
# one workgroup per row, and a dispatch holds at most 65,535 (Gemma's 262,144-row head)
MAX_CHUNK_ROWS = 65535
# greedy sampling over more ids than this: a first argmax level of one workgroup per this many
ARGMAX_SPLIT = 2048


class Tensor:
    """One weight: `shape` in values, `dtype` its format name, stored as the format's raw
    little-endian bytes in one or more GPU buffers (row ranges)."""

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self.nbytes = formats.get(dtype).nbytes(self.shape)
        self.chunks = []     # [buffer, row0, rows, byte0, nbytes]


class GpuKVCache:
    """Per-layer K/V buffers [Hkv, slots, hd] on the GPU; `length` tokens valid.

    A sliding-window layer (window W) keeps a ring of min(capacity, W + max(W, max_tokens))
    slots (position p in slot p mod slots): the W keys a query sees plus room for one step's
    rows (written before they are read) and, as on numpy, a rewind of up to W + 1 tokens."""

    def __init__(self, backend, start, stop, capacity):
        self.device, self.model, self.max_tokens = backend.device, backend.model, backend.max_tokens
        self.capacity = capacity
        self.length = 0
        self.k, self.v, self.slots, self.windows = {}, {}, {}, {}
        self.floors = {}     # layer -> its first valid position, after a hand-over (kvwire)
        self.plans = {}      # step key -> recorded dispatches over this cache's buffers
        self.groups = {}     # bind groups that hold this cache's buffers (built with the plans)
        self.buffer_ids = set()
        self._scratch = None     # split-attention partials, [T*H, NS, HD+2] (lower.py)
        for i in range(start, stop) if self.model.causal else ():
            self.add_layer(i)

    @property
    def nbytes(self):
        return 2 * self.model.n_kv_heads * self.model.head_dim * 4 * sum(self.slots.values())

    def scratch(self, nbytes):
        """A scratch buffer of at least `nbytes` owned by this cache (planned once per
        capacity: the split count depends only on it)."""
        if self._scratch is None or self._scratch[1] < nbytes:
            self._scratch = (self.device.create_buffer(nbytes), nbytes)
            self.buffer_ids.add(id(self._scratch[0]))
        return self._scratch[0]

    def truncate(self, n):
        check_rewind(self.length, n, {i: (self.slots[i], w) for i, w in self.windows.items()})
        check_floors(n, self.floors, self.windows)
        self.length = n
        if n == 0:
            self.floors.clear()

    # ------------------------------------------------------------------ hand-over (pyapp.kvwire)
    def _changed(self):
        """Layers came or went: recorded plans and bind groups over the old set are stale."""
        self.plans.clear()
        self.groups.clear()
        self.buffer_ids = {id(b) for b in list(self.k.values()) + list(self.v.values())}
        if self._scratch is not None:
            self.buffer_ids.add(id(self._scratch[0]))

    def add_layer(self, i):
        """Allocate layer i's K/V: a ring of min(capacity, W + max(W, max_tokens)) slots on a
        window layer (the W keys a query sees, plus one step's rows and rewind slack)."""
        m = self.model
        w = attention_windows(m).get(i)
        n = min(self.capacity, w + max(w, self.max_tokens)) if w else self.capacity
        if w:
            self.windows[i] = w
        self.slots[i] = n
        nb = m.n_kv_heads * n * m.head_dim * 4
        self.k[i] = self.device.create_buffer(nb)
        self.v[i] = self.device.create_buffer(nb)
        self._changed()

    def drop_layer(self, i):
        for b in (self.k.pop(i, None), self.v.pop(i, None)):
            if b is not None:
                b.destroy()
        for d in (self.slots, self.windows, self.floors):
            d.pop(i, None)
        self._changed()

    def _layer_reads(self, i):
        """(p0, n, [(buffer offset, bytes)] per head and ring run) of what read_layer returns."""
        m = self.model
        p0 = window_start(self.length, self.windows.get(i))
        row = m.head_dim * 4
        S = self.slots[i]
        spans = [((h * S + s) * row, cnt * row) for h in range(m.n_kv_heads)
                 for s, _off, cnt in ring_runs(p0, self.length, S)]
        return p0, spans

    def read_layer(self, i):
        """(p0, K bytes, V bytes): layer i's f32 keys/values [Hkv, length - p0, hd] for positions
        p0..length-1 (native binding: blocking reads)."""
        p0, spans = self._layer_reads(i)
        return (p0, b"".join(self.device.read(self.k[i], o, n) for o, n in spans if n),
                b"".join(self.device.read(self.v[i], o, n) for o, n in spans if n))

    async def read_layer_async(self, i):
        """read_layer for the browser (mapAsync readbacks)."""
        p0, spans = self._layer_reads(i)
        k = [bytes(await self.device.read_async(self.k[i], o, n)) for o, n in spans if n]
        v = [bytes(await self.device.read_async(self.v[i], o, n)) for o, n in spans if n]
        return p0, b"".join(k), b"".join(v)

    def write_layer(self, i, p0, k, v):
        """Store f32 K/V [Hkv, n, hd] (buffer-protocol bytes or JS typed arrays, written as
        they are) of positions p0..p0+n-1, ending at `length`, into layer i."""
        m = self.model
        row = m.head_dim * 4
        n = data_nbytes(k) // (m.n_kv_heads * row)
        if data_nbytes(k) != n * m.n_kv_heads * row or data_nbytes(v) != data_nbytes(k):
            raise ValueError(f"KV of layer {i}: K and V must both be [{m.n_kv_heads}, n, {m.head_dim}] f32")
        check_handover(i, p0, n, self.length, self.windows.get(i))
        S = self.slots[i]
        for h in range(m.n_kv_heads):
            for s, off, cnt in ring_runs(p0, p0 + n, S):
                a = (h * n + off) * row
                for src, dst in ((k, self.k[i]), (v, self.v[i])):
                    self.device.write(dst, (h * S + s) * row, byte_slice(src, a, a + cnt * row))
        if p0:
            self.floors[i] = p0
        else:
            self.floors.pop(i, None)

    def destroy(self):
        """Free the K/V buffers now (they also go with the cache object: the backend keeps
        no reference to them)."""
        for b in list(self.k.values()) + list(self.v.values()) + ([self._scratch[0]] if self._scratch else []):
            b.destroy()
        self.k, self.v, self.slots, self.plans, self.groups, self.buffer_ids = {}, {}, {}, {}, {}, set()
        self._scratch = None


# ----------------------------------------------------------------------------- backend

# Steps in flight in pipelined decode (native binding; the edge keeps its own PIPELINE_DEPTH).
# H200 runs 13f/13g, tok/s at depth 2 / 4: Llama 7B f16 182 / 189-201, SmolLM2 365 / 477-582,
# Llama 1B 436 / 430-524 (6 and 8 no better): the host's per-token jitter needs the slack.
DECODE_DEPTH = 4

# A step-by-step token's pass cut into submits (device.chunk_ends): the first SUBMIT_CHUNKS[0]
# dispatches, then SUBMIT_CHUNKS[1] each, so the GPU runs the first layers while the host
# encodes the rest (llama.cpp's Vulkan backend submits every N nodes for the same reason); the
# host encodes ~6.5-8 us a dispatch on the H200 host (run 13n). None: one submit. Pipelined
# decode keeps one submit a step: the host encodes there while earlier steps run, and each
# extra submit is host time on a host-bound token. (16, 16) measured best of five rules on the
# H200 (run 14c: step-by-step token, median, vs one submit: SmolLM2 f16 3.06 -> 2.01 ms, Gemma 3
# 270M 3.40 -> 2.61, Llama 7B 7.16 -> 5.98; (16, 64): 2.22 / 2.95 / 5.94).
SUBMIT_CHUNKS = (16, 16)

# A step-by-step token (T = 1) encodes the next step's command buffer right after its own
# submit, while the GPU runs it (Device.submit's `ahead`): the next step then only writes its
# inputs and submits. Chunks still start the first token after a prompt.
ENCODE_AHEAD = True


class GpuBackend:
    name = "wgpu"

    def __init__(self, device: Device, model: Model, start=0, stop=None, embed=None, head=None,
                 dtype="f32", shapes=None, dtypes=None, max_tokens=None, max_positions=None,
                 variants=None, max_binding=None, widths=None, submit_chunks="auto", encode_ahead=ENCODE_AHEAD):
        self.device = device
        self.model = model
        self.start = start
        self.stop = model.n_layers if stop is None else stop
        self.embed = (start == 0) if embed is None else embed
        self.head = (self.stop == model.n_layers) if head is None else head
        self.ops = model.ops(self.start, self.stop, embed=self.embed, head=self.head)
        lower.check_ops(self.ops)
        self.dtype = dtype
        shapes = dict(shapes) if shapes is not None else infer_shapes(model)
        self._shapes, self._dtypes = shapes, dict(dtypes or {})     # for extend_down
        self.widths = widths_from_shapes(model, shapes, widths or {})
        self.max_positions = max_positions or min(model.max_context, 2048)
        self.max_tokens = max_tokens or min(self.max_positions, 512)
        self.max_binding = min(max_binding or 1 << 62, device.limits["max_storage_binding"],
                               device.limits["max_buffer"])
        self.variants = {"linear": "row", "norm_wg": 1, "attention": "row"}
        if variants:
            self.variants.update(variants)
        # how weight bindings are read (wgsl.STORAGE): typed f16 loads where the adapter has
        # `shader-f16`, unless the variants say "u32" (the loaders every adapter runs)
        # a CPU implementation of WebGPU: plans that trade GPU parallelism for fewer dispatches
        self.cpu = cpu_adapter(getattr(device, "info", {}))
        # step-by-step tokens' chunk rule: SUBMIT_CHUNKS, but one submit on a CPU adapter, whose
        # "GPU" runs on the cores that encode (nothing to overlap; lavapipe: no gain measured)
        self.submit_chunks = (None if self.cpu else SUBMIT_CHUNKS) if submit_chunks == "auto" else submit_chunks
        self.encode_ahead = encode_ahead
        f16 = self.variants.get("storage", "f16") == "f16" and "shader-f16" in device.features
        self.storage = "f16" if f16 else "u32"
        self.stats = {"steps": 0, "dispatches": 0, "submits": 0, "readbacks": 0,
                      "plans_built": 0}
        self.step_dispatches = 0      # of the last step prepared
        # weights
        self.tensors = {}
        self._alloc_tensors(self.ops)
        # activations, ids, params, rope table, output token
        self.acts = {}
        self._alloc_acts(self.ops)
        self.ids_buf = device.create_buffer(self.max_tokens * 4)
        self.ids_src = self.ids_buf   # what `embed` reads while a plan is built (tok_buf: pipelined)
        self._ring = []               # readback buffers of pipelined decode
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
        self.argmax_buf = None        # (buffer, chunks): greedy's partial argmaxes over a large vocabulary
        self.readback = device.create_buffer(16, "readback")
        self.ready = None             # progressive loading: parts whose weights are on the GPU
        self.rope_bufs = {}           # theta -> cos/sin table (Gemma: one per local/global base)
        self._alloc_ropes(self.ops)

    def _alloc_tensors(self, ops):
        """Weight buffers for the tensors of ``ops`` not here yet; their names."""
        new = [n for n in self.model.tensors(ops) if n not in self.tensors]
        for n in new:
            t = self.tensors[n] = Tensor(n, self._shapes[n], formats.get(self._dtypes.get(n, self.dtype)).name)
            # any matrix may be split by rows; lower.py addresses the chunks (gathers, GEMVs over
            # output rows, transposed GEMVs over input rows, position tables)
            self._alloc(t, len(t.shape) == 2)
        return new

    def _alloc_acts(self, ops):
        for o in ops:
            for n in list(o.ins) + list(o.outs):
                if n not in self.acts and n not in ("ids", "logits"):
                    self.acts[n] = self.device.create_buffer(self.max_tokens * self.widths[n] * 4)

    def _alloc_ropes(self, ops):
        for o in ops:
            if o.kind == "rope" and o.attrs["theta"] not in self.rope_bufs:
                self.rope_bufs[o.attrs["theta"]] = self._upload_rope(o.attrs["head_dim"], o.attrs["theta"])

    def extend_down(self, start):
        """Grow the backend from [self.start, stop) down to [start, stop) (and the embedding at
        0): buffers for the new layers' weights (a progressive runner whose split goes below its
        first target streams them; with track_ready() they run once marked ready). Returns the
        new tensors' names; nothing already here changes, so recorded plans stay valid."""
        if start >= self.start:
            return []
        ops = self.model.ops(start, self.start, embed=start == 0, head=False)
        lower.check_ops(ops)
        new = self._alloc_tensors(ops)
        self._alloc_acts(ops)
        self._alloc_ropes(ops)
        self.start, self.embed = start, self.embed or start == 0
        self.ops = self.model.ops(self.start, self.stop, embed=self.embed, head=self.head)
        return new

    # ------------------------------------------------------------------ weights
    def _alloc(self, t: Tensor, splittable):
        if not splittable and t.nbytes > self.max_binding:
            raise GpuError(f"{t.name}: {t.nbytes} bytes exceed the device's binding limit "
                           f"{self.max_binding} and cannot be split")
        if len(t.shape) == 1 or (t.nbytes <= self.max_binding and t.shape[0] <= MAX_CHUNK_ROWS):
            rows = t.shape[0]
            t.chunks.append([self.device.create_buffer(t.nbytes), 0, rows, 0, t.nbytes])
            return
        rows, rb = t.shape[0], t.nbytes // t.shape[0]
        per = min(self.max_binding // rb, MAX_CHUNK_ROWS)
        while per > 0 and (per * rb) % 4:       # chunks start on 4-byte boundaries
            per -= 1
        if per < 1:
            raise GpuError(f"{t.name}: one row of {rb} bytes exceeds the binding limit")
        r0 = 0
        while r0 < rows:
            n = min(per, rows - r0)
            t.chunks.append([self.device.create_buffer(n * rb), r0, n, r0 * rb, n * rb])
            r0 += n

    # ------------------------------------------------------------------ progressive loading
    def track_ready(self):
        """From now on steps only run over parts marked ready (weights streamed and verified):
        a backend built for [start, stop) runs [K, stop) for any K >= runnable_from()."""
        self.ready = set()

    def mark_ready(self, part):
        """`part`: a layer index, "embed" or "head", whose every tensor is written and verified."""
        if self.ready is not None:
            self.ready.add(part)

    def runnable_from(self):
        """The lowest K such that [K, stop) (and the head, if built with one) can run; None
        while nothing can (stop when only the head is there)."""
        if self.ready is None:
            return self.start
        if self.head and "head" not in self.ready:
            return None
        k = self.stop
        while k > self.start and (k - 1) in self.ready:
            k -= 1
        if k == 0 and self.embed and "embed" not in self.ready:
            k = 1                     # ids enter through the embedding: not here yet
        return k

    def _check_ready(self, start, stop, embed, head):
        if self.ready is None:
            return
        missing = [i for i in range(start, stop) if i not in self.ready]
        missing += [p for p, need in (("embed", embed), ("head", head)) if need and p not in self.ready]
        if missing:
            raise ValueError(f"weights of {', '.join(map(str, missing))} have not arrived yet: "
                             f"this backend runs from layer {self.runnable_from()}")

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

    def _upload_rope(self, hd, theta):
        """The cos/sin table [positions, hd/2, 2] of base `theta`, in float64 like numpy."""
        half = hd // 2
        inv = [1.0 / (theta ** (i * 2 / hd)) for i in range(half)]
        tab = array("f")
        for pos in range(self.max_positions):
            for f in inv:
                a = pos * f
                tab.append(math.cos(a))
                tab.append(math.sin(a))
        buf = self.device.create_buffer(len(tab) * 4)
        self.device.write(buf, 0, tab)
        return buf

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

    def _plan(self, T, cache, start, stop, embed, head, all_logits, sample, gpu_ids=False, segs=0):
        """The recorded dispatch list of one step; built once per key, replayed. `gpu_ids`:
        the embedding reads the id the previous step sampled (tok_buf), not ids_buf; `segs`:
        encoder sequences packed in the step (0: one)."""
        key = (T, start, stop, embed, head, all_logits, sample, self._gen, gpu_ids, segs)
        plans = cache.plans if cache is not None else self._enc_plans
        rec = plans.get(key)
        if rec is not None:
            return rec
        m = self.model
        self._planning = cache
        self.ids_src = self.tok_buf if gpu_ids else self.ids_buf
        try:
            disp = lower.lower(self, m.ops(start, stop, embed=embed, head=False), lower.Step(T, cache, segs=segs))
            if head:
                last = m.causal and not all_logits
                disp += lower.lower(self, list(m.head), lower.Step(T, cache, head=last, segs=segs),
                                    head_first_row=last)
                if sample:
                    disp += self.sample_dispatches()
        finally:
            self._planning = None
            self.ids_src = self.ids_buf
        rec = (self.device.record(disp), len(disp))
        plans[key] = rec
        self.stats["plans_built"] += 1
        return rec

    def sample_dispatches(self):
        """The sampler; on GPUs above ARGMAX_SPLIT ids a greedy step's argmax first in chunks
        of that many ids, one workgroup each (argmax_part.wgsl), the sampler reducing the
        partials. Not on CPU adapters (lavapipe: 2.6 ms for the chunks vs 0.45 ms in one
        workgroup over 262,144 ids); the variant `argmax_split` (ids per chunk, 0: off) forces it."""
        V = self.model.vocab
        split = self.variants.get("argmax_split", 0 if self.cpu else ARGMAX_SPLIT)
        np_ = -(-V // split) if split and V > split else 0
        if not np_:
            src = kernels.render("sample", V=V, NP=0, PARTDECL="fn part_at(i: u32) -> u32 { return 0u; }")
            return [self.dispatch(src, {1: self.logits, 2: self.tok_buf}, 1, head=True)]
        if self.argmax_buf is None or self.argmax_buf[1] < np_:
            self.argmax_buf = (self.device.create_buffer(8 * np_), np_)
        buf = self.argmax_buf[0]
        part = kernels.render("argmax_part", V=V, CH=split)
        src = kernels.render("sample", V=V, NP=np_, PARTDECL=(
            "@group(0) @binding(3) var<storage, read> part: array<u32>;\n"
            "fn part_at(i: u32) -> u32 { return part[i]; }"))
        return [self.dispatch(part, {1: self.logits, 2: buf}, np_, head=True),
                self.dispatch(src, {1: self.logits, 2: self.tok_buf, 3: buf}, 1, head=True)]

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
        if ids is ON_GPU:
            if start != 0 or not self.embed or cache is None:
                raise ValueError("a pipelined step starts at layer 0 from a sampled token")
            T = 1
        elif ids is not None:
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
        self._check_ready(start, stop, ids is not None, head)
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
        rec, nd = self._plan(T, cache, start, stop, ids is not None, head, all_logits, sample, ids is ON_GPU,
                             segs)
        writes.append((self.params, 0, self._params(T, pos0, sp, n)))
        self.stats["steps"] += 1
        self.stats["dispatches"] += nd
        self.stats["submits"] += 1
        self.step_dispatches = nd     # the recording's length (a JS array in the browser)
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
        bufs += list(self.rope_bufs.values())
        bufs += [b for b in (self.logits, self.ids_buf, self.params, self.tok_buf,
                             self.readback, self.seg_buf) if b is not None] + self._ring
        bufs += [self.argmax_buf[0]] if self.argmax_buf else []
        for b in bufs:
            try:
                b.destroy()
            except Exception:  # noqa: BLE001
                pass
        self.tensors, self.acts = {}, {}
        self._groups.clear()
        self._enc_plans.clear()

    def _step_submit(self, ids, x, cache, params, n, start, stop, readback=None, chunks=None, ahead=False):
        """Submit one step (prompt chunks beyond max_tokens first); `chunks`: the rule its
        pass is cut into submits by (SUBMIT_CHUNKS; None: one submit); `ahead`: a one-token
        step encodes the next one's command buffer after its submit (step-by-step decode; not
        pipelined steps, whose readback slot differs from step to step: H200 run 15k, encoding
        one that never matched cost SmolLM2 f16 pipelined ~555-581 -> 302-530 tok/s)."""
        from ..sampling import SamplingParams

        params = params or SamplingParams()
        if not self.model.causal:
            raise ValueError("step() needs a decoder model")
        # a prompt longer than the activation buffers is prefilled in chunks
        if ids is not ON_GPU:
            ids, x = self._prefill_chunks(ids, x, cache, start, stop)
        rec, T, pos0, _h, writes = self._prepare(ids, x, cache, start, stop, True, False, True, params, n)
        ends = chunk_ends(self.step_dispatches, chunks)
        submits = self.device.submit(rec, writes, copy=(self.tok_buf, 0, readback or self.readback, 0, 4),
                                     ends=ends, ahead=ahead and T == 1)
        self.stats["submits"] += (submits or 1) - 1      # _prepare counted one
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
        self._step_submit(ids, x, cache, params, n, start, stop, chunks=self.submit_chunks, ahead=self.encode_ahead)
        return struct.unpack("<I", self.device.read(self.readback, 0, 4))[0]

    async def step_async(self, ids=None, x=None, cache=None, params=None, n=0, start=None, stop=None):
        """The same, awaiting the readback (the browser binding's mapAsync)."""
        self._step_submit(ids, x, cache, params, n, start, stop, chunks=self.submit_chunks, ahead=self.encode_ahead)
        return struct.unpack("<I", bytes(await self.device.read_async(self.readback, 0, 4)))[0]

    def pipeline(self, cache, params=None, depth=DECODE_DEPTH):
        """The steps of decode.generate_pipelined_async on this backend (whole model + sampler
        here): each step after the first embeds the token its predecessor's sampler left on
        the GPU (ON_GPU), so step n+1 is encoded and submitted before token n is read (the
        host's encoding overlaps the GPU; in the browser several mapAsync wait at once).
        Token n is read from readback slot n % depth."""
        while len(self._ring) < depth:
            self._ring.append(self.device.create_buffer(16, "readback"))
        return _Pipeline(self, cache, params, depth)

    async def decode_async(self, prompt_ids, cache, params=None, max_new_tokens=32, eos_ids=(), depth=DECODE_DEPTH,
                           on_token=None, should_stop=None, ahead_s=None):
        """Pipelined decode (see pipeline()); the ids equal step() one at a time: steps
        submitted past a stop token are dropped (their KV rows cut off the cache).
        `ahead_s`: steps in flight by time, at most `depth` (decode.InFlight).
        Returns decode.GenerationResult (ids: the stop token included, like decode.generate)."""
        from ..decode import generate_pipelined_async
        return await generate_pipelined_async(self.pipeline(cache, params, depth), prompt_ids, max_new_tokens,
                                              eos_ids, on_token, should_stop, depth, ahead_s)

    def decode(self, prompt_ids, cache, params=None, max_new_tokens=32, eos_ids=(), depth=DECODE_DEPTH,
               on_token=None, should_stop=None, ahead_s=None):
        """decode_async on the native binding (its reads never suspend)."""
        from .autotune import _run_sync
        return _run_sync(self.decode_async(prompt_ids, cache, params, max_new_tokens, eos_ids, depth,
                                           on_token, should_stop, ahead_s))

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
        rec = self.device.record(self.sample_dispatches())
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


class _Pipeline:
    """submit / read / drop of one pipelined generation (decode.generate_pipelined_async)."""

    def __init__(self, backend, cache, params, depth):
        self.be, self.cache, self.params, self.depth = backend, cache, params, depth
        self.browser = backend.device.kind == "browser"
        self.reads = {}               # n -> pending mapAsync (browser)

    def submit(self, ids, n):
        be, slot = self.be, self.be._ring[n % self.depth]
        be._step_submit(ON_GPU if ids is None else ids, None, self.cache, self.params, n, None, None,
                        readback=slot)
        if self.browser:              # start the mapAsync now: several resolve in one poll
            import asyncio
            self.reads[n] = asyncio.ensure_future(be.device.read_async(slot, 0, 4))

    async def read(self, n):
        if self.browser:
            raw = await self.reads.pop(n)
        else:
            raw = self.be.device.read(self.be._ring[n % self.depth], 0, 4)
        return struct.unpack("<I", bytes(raw))[0]

    async def drop(self, k):
        reads, self.reads = list(self.reads.values()), {}
        for f in reads:               # the dropped steps' reads: their buffers are reused next time
            try:
                await f
            except Exception:  # noqa: BLE001
                pass
        self.cache.length -= k
