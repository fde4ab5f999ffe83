// attention_split.wgsl's job (RoPE + KV-cache append + causal attention over a split of the
// context, same bindings, same outputs and partials layout) with every loop over keys of a
// fixed trip count, so each lane issues its loads at once instead of one per iteration.
// Per chunk of CH = 32 keys (decode, SL = 32: one chunk, three workgroup barriers):
// lane l loads the values of its output dims (l + 64u) of the 32 keys into registers; for the
// scores lane 8g + r takes keys g + 8kk and dims r + 8i (8 lanes read neighbouring floats of a
// row), the 32 x 8 partial dots are summed per key in workgroup memory; then every lane takes
// the chunk's max and the exps and accumulates p * v for its dims.
// Keys [k0, nc) come from the cache (rows < pos0, clamped so no load touches a row written in
// this dispatch); this step's keys [nc, k1) from the k/v activations, rotated here, as before.
// Split 0 of the first query head of each kv head appends row t's rotated k and v to the cache.
// NS == 1: the normalized output goes to `o` ([T, H*HD]); else (acc[HD], m, l) per split
// goes to `o` ([T*H, NS, HD+2]) and attention_merge.wgsl (or the o-projection) finishes.
@group(0) @binding(1) var<storage, read> cs: array<vec2f>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<f32>;
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;
@group(0) @binding(7) var<storage, read_write> o: array<f32>;
const H: u32 = ${H}u;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const HALF: u32 = ${HALF}u;
const CAP: u32 = ${CAP}u;
const SCALE: f32 = ${SCALE};
const NS: u32 = ${NS}u;
const SL: u32 = ${SL}u;
const DPL: u32 = ${DPL}u;     // dims per lane: ceil(HD / 64)
const G: u32 = H / HKV;
const CH: u32 = 32u;          // keys per chunk
const DR: u32 = (HD + 7u) / 8u; // dims per lane in the scores
const VN: u32 = CH * DPL;
var<workgroup> qs: array<f32, ${HD}>;
var<workgroup> part: array<f32, 2080>;   // CH * LP: lane l's product for key j at j * LP + l
var<workgroup> red: array<f32, 64>;      // key j's score = red[j]

// element d of key s (>= pos0, this step's) of kv head kvh, rotated
fn new_key(kvh: u32, s: u32, d: u32) -> f32 {
  let i = d % HALF;
  let b = ((s - p.pos0) * HKV + kvh) * HD + i;
  let c = cs[s * HALF + i];
  let x0 = k[b];
  let x1 = k[b + HALF];
  return select(x1 * c.x + x0 * c.y, x0 * c.x - x1 * c.y, d < HALF);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let id = wg.x;
  let sp = wg.y;
  let t = id / H;
  if (t >= p.T) { return; }           // uniform per workgroup
  let h = id % H;
  let kvh = h / G;
  let pos = p.pos0 + t;
  let k0 = sp * SL;
  let k1 = min(pos + 1u, k0 + SL);
  if (k0 >= k1) {                     // a split past pos (never split 0): empty state
    for (var d = l; d < HD; d += 64u) { o[(id * NS + sp) * (HD + 2u) + d] = 0.0; }
    if (l == 0u) {
      o[(id * NS + sp) * (HD + 2u) + HD] = -3.0e38;
      o[(id * NS + sp) * (HD + 2u) + HD + 1u] = 0.0;
    }
    return;
  }
  for (var i = l; i < HALF; i += 64u) {
    let c = cs[pos * HALF + i];
    let b = (t * H + h) * HD + i;
    let x0 = q[b];
    let x1 = q[b + HALF];
    qs[i] = (x0 * c.x - x1 * c.y) * SCALE;
    qs[i + HALF] = (x1 * c.x + x0 * c.y) * SCALE;
  }
  if (sp == 0u && h % G == 0u) {
    for (var d = l; d < HD; d += 64u) {
      kc[(kvh * CAP + pos) * HD + d] = new_key(kvh, pos, d);
      vc[(kvh * CAP + pos) * HD + d] = v[(t * HKV + kvh) * HD + d];
    }
  }
  workgroupBarrier();
  var dd: array<u32, ${DPL}>;         // this lane's output dims, clamped
  for (var u = 0u; u < DPL; u++) { dd[u] = min(l + u * 64u, HD - 1u); }
  // scores: lane l = 8 g + r takes keys g + 8 kk (kk < 4) of a chunk, dims r + 8 i of each
  let r = l % 8u;
  let g = l / 8u;
  var qk: array<f32, DR>;
  for (var i = 0u; i < DR; i++) {
    let d = r + i * 8u;
    qk[i] = select(0.0, qs[min(d, HD - 1u)], d < HD);
  }
  let nc = clamp(p.pos0, k0, k1);     // keys [k0, nc) cached, [nc, k1) this step's
  var m = -3.0e38;
  var ls = 0.0;
  var acc: array<f32, ${DPL}>;
  for (var c0 = k0; c0 < k1; c0 += CH) {
    let c1 = min(k1, c0 + CH);
    let cn = clamp(nc, c0, c1);       // this chunk's cached keys end here
    var vv: array<f32, VN>;           // the cached keys' values of this lane's dims, loaded
    if (c0 < cn) {                    // before the scores so their latency overlaps
      for (var j = 0u; j < CH; j++) {
        let b = (kvh * CAP + min(c0 + j, cn - 1u)) * HD;
        for (var u = 0u; u < DPL; u++) { vv[j * DPL + u] = vc[b + dd[u]]; }
      }
    }
    for (var kk = 0u; kk < CH / 8u; kk++) {
      let j = g + kk * 8u;
      var e = 0.0;
      if (c0 < cn) {                  // uniform; rows clamped below pos0
        let b = (kvh * CAP + min(c0 + j, cn - 1u)) * HD;
        for (var i = 0u; i < DR; i++) { e += qk[i] * kc[b + min(r + i * 8u, HD - 1u)]; }
      }
      if (c0 + j >= cn && c0 + j < c1) {
        e = 0.0;
        for (var i = 0u; i < DR; i++) { e += qk[i] * new_key(kvh, c0 + j, min(r + i * 8u, HD - 1u)); }
      }
      part[j * 9u + r] = e;
    }
    workgroupBarrier();
    if (l < CH) {
      var e = 0.0;
      for (var i = 0u; i < 8u; i++) { e += part[l * 9u + i]; }
      red[l] = e;
    }
    workgroupBarrier();
    var cm = m;
    for (var j = 0u; j < CH; j++) {
      if (c0 + j < c1) { cm = max(cm, red[j]); }
    }
    let corr = exp(m - cm);
    ls *= corr;
    for (var u = 0u; u < DPL; u++) { acc[u] *= corr; }
    if (c0 < cn) {
      for (var j = 0u; j < CH; j++) {
        let pj = select(0.0, exp(red[j] - cm), c0 + j < cn);
        ls += pj;
        for (var u = 0u; u < DPL; u++) { acc[u] += pj * vv[j * DPL + u]; }
      }
    }
    for (var s = cn; s < c1; s++) {
      let pj = exp(red[s - c0] - cm);
      ls += pj;
      let b = ((s - p.pos0) * HKV + kvh) * HD;
      for (var u = 0u; u < DPL; u++) { acc[u] += pj * v[b + dd[u]]; }
    }
    m = cm;
    workgroupBarrier();               // `part` and `red` are rewritten by the next chunk
  }
  for (var u = 0u; u < DPL; u++) {
    let d = l + u * 64u;
    if (d < HD) {
      if (NS == 1u) { o[id * HD + d] = acc[u] / ls; }
      else { o[(id * NS + sp) * (HD + 2u) + d] = acc[u]; }
    }
  }
  if (NS > 1u && l == 0u) {
    o[(id * NS + sp) * (HD + 2u) + HD] = m;
    o[(id * NS + sp) * (HD + 2u) + HD + 1u] = ls;
  }
}
