// Causal attention over the KV cache with this step's RoPE and cache append fused in,
// the context split across workgroups (flash-decoding). Workgroup (query row t * H + head h,
// split sp) covers keys [sp * SL, min(S, (sp + 1) * SL)), S = pos0 + t + 1, 64 keys at a time
// (one per lane for the scores, then every lane accumulates its output dims over the 64).
// Keys before pos0 come from the cache (already rotated); keys of this step are read from
// the k/v activations and rotated here, so no workgroup waits for another's cache write.
// Split 0 of the first query head of each kv head appends row t's rotated k and v to the cache.
// NS == 1: the normalized output goes to `o` ([T, H*HD]); else (acc[HD], m, l) per split
// goes to `o` ([T*H, NS, HD+2]) and attention_merge.wgsl finishes.
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
const DPL: u32 = ${DPL}u;     // output dims per lane: ceil(HD / 64)
const G: u32 = H / HKV;
var<workgroup> qs: array<f32, ${HD}>;
var<workgroup> sc: array<f32, 64>;

// element pair (i, i + HALF) of key position s of kv head kvh, rotated
fn key_pair(kvh: u32, s: u32, i: u32) -> vec2f {
  if (s < p.pos0) {
    let b = (kvh * CAP + s) * HD + i;
    return vec2f(kc[b], kc[b + HALF]);
  }
  let b = ((s - p.pos0) * HKV + kvh) * HD + i;
  let c = cs[s * HALF + i];
  let x0 = k[b];
  let x1 = k[b + HALF];
  return vec2f(x0 * c.x - x1 * c.y, x1 * c.x + x0 * c.y);
}

fn val(kvh: u32, s: u32, d: u32) -> f32 {
  if (s < p.pos0) { return vc[(kvh * CAP + s) * HD + d]; }
  return v[((s - p.pos0) * HKV + kvh) * HD + d];
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
  for (var i = l; i < HALF; i += 64u) {
    let c = cs[pos * HALF + i];
    let b = (t * H + h) * HD + i;
    let x0 = q[b];
    let x1 = q[b + HALF];
    qs[i] = (x0 * c.x - x1 * c.y) * SCALE;
    qs[i + HALF] = (x1 * c.x + x0 * c.y) * SCALE;
  }
  if (sp == 0u && h % G == 0u) {
    for (var i = l; i < HALF; i += 64u) {
      let r = key_pair(kvh, pos, i);
      let b = (kvh * CAP + pos) * HD + i;
      kc[b] = r.x;
      kc[b + HALF] = r.y;
    }
    for (var d = l; d < HD; d += 64u) {
      vc[(kvh * CAP + pos) * HD + d] = v[(t * HKV + kvh) * HD + d];
    }
  }
  workgroupBarrier();
  var m = -3.0e38;
  var ls = 0.0;
  var acc: array<f32, ${DPL}>;
  for (var c0 = k0; c0 < k1; c0 += 64u) {
    let s = c0 + l;
    var e = -3.0e38;
    if (s < k1) {
      e = 0.0;
      if (s < p.pos0) {               // cached key: a branch-free loop the compiler unrolls
        let b = (kvh * CAP + s) * HD;
        for (var i = 0u; i < HD; i++) { e += qs[i] * kc[b + i]; }
      } else {
        for (var i = 0u; i < HALF; i++) {
          let r = key_pair(kvh, s, i);
          e += qs[i] * r.x + qs[i + HALF] * r.y;
        }
      }
    }
    sc[l] = e;
    workgroupBarrier();
    let n = min(64u, k1 - c0);
    var cm = m;
    for (var j = 0u; j < n; j++) { cm = max(cm, sc[j]); }
    let corr = exp(m - cm);
    ls *= corr;
    for (var u = 0u; u < DPL; u++) { acc[u] *= corr; }
    // keys [c0, nc) are cached, [nc, c0 + n) are this step's
    let nc = clamp(p.pos0, c0, c0 + n);
    for (var j = c0; j < nc; j++) {
      let pj = exp(sc[j - c0] - cm);
      ls += pj;
      for (var u = 0u; u < DPL; u++) {
        let d = min(l + u * 64u, HD - 1u);
        acc[u] += pj * vc[(kvh * CAP + j) * HD + d];
      }
    }
    for (var j = nc; j < c0 + n; j++) {
      let pj = exp(sc[j - c0] - cm);
      ls += pj;
      for (var u = 0u; u < DPL; u++) { acc[u] += pj * val(kvh, j, min(l + u * 64u, HD - 1u)); }
    }
    m = cm;
    workgroupBarrier();
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
