// One decode token's (T = 1) attention with the layer's input RMSNorm, the q/k/v projections,
// RoPE and the KV-cache append fused in: a layer's first dispatch. Workgroup (head h, split sp)
// covers keys [sp * SL, min(pos + 1, (sp + 1) * SL)), pos = p.pos0, as in attention_split.wgsl.
// Every active workgroup computes its head's q (HD rows of wq against the normed row x); the
// workgroup(s) whose split holds pos also compute the kv head's k and v (the G query heads of
// a kv head compute identical values; the first appends them to the cache) and take key pos
// from registers, so no workgroup reads a cache row another one writes in this dispatch.
// Splits past pos return at once (the merge skips them).
// NS == 1: the normalized output goes to `o` ([H*HD]); else (acc[HD], m, l) per split goes to
// `o` ([H, NS, HD+2]) and the o-projection merges it (attention_merge_input.wgsl).
@group(0) @binding(1) var<storage, read> cs: array<vec2f>;
@group(0) @binding(2) var<storage, read> x: array<${VT}>;
${NWDECL}
${WQDECL}
${WKDECL}
${WVDECL}
@group(0) @binding(7) var<storage, read_write> kc: array<f32>;
@group(0) @binding(8) var<storage, read_write> vc: array<f32>;
@group(0) @binding(9) var<storage, read_write> o: array<f32>;
${MULV}
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
const K: u32 = ${KV}u;        // the input row in loads (${VT})
const D: f32 = ${D}.0;        // ... and in values
const EPS: f32 = ${EPS};
const KP: u32 = 8u;           // lanes per weight row: KP neighbouring loads of a row at once
var<workgroup> qs: array<f32, HD>;
var<workgroup> ks: array<f32, HD>;
var<workgroup> vs: array<f32, HD>;
var<workgroup> red: array<f32, ${HDKP}>;
var<workgroup> sc: array<f32, 64>;

fn ldm(m: u32, i: u32) -> ${VT} {       // m is uniform: the branch costs nothing per lane
  if (m == 0u) { return ldwq(i); }
  if (m == 1u) { return ldwk(i); }
  return ldwv(i);
}

// rows r0..r0+HD of weight m against the normed input (without 1/rms): partial sums in red
fn project(m: u32, r0: u32, l: u32) {
  for (var i = l; i < HD * KP; i += 64u) {
    let r = i / KP;
    var acc = 0.0;
    for (var k = i % KP; k < K; k += KP) { acc += mulv(ldm(m, (r0 + r) * K + k), x[k] * ldnw(k)); }
    red[i] = acc;
  }
  workgroupBarrier();
}

fn rowsum(r: u32) -> f32 {
  var s = 0.0;
  for (var j = 0u; j < KP; j++) { s += red[r * KP + j]; }
  return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let h = wg.x;
  let sp = wg.y;
  let kvh = h / G;
  let pos = p.pos0;
  let k0 = sp * SL;
  if (k0 > pos) { return; }           // uniform per workgroup
  let k1 = min(pos + 1u, k0 + SL);
  // the RMSNorm's 1 / rms of the input row
  var ss = 0.0;
  for (var k = l; k < K; k += 64u) { ss += mulv(x[k], x[k]); }
  sc[l] = ss;
  workgroupBarrier();
  var tot = 0.0;
  for (var j = 0u; j < 64u; j++) { tot += sc[j]; }
  let rs = 1.0 / sqrt(tot / D + EPS);
  project(0u, h * HD, l);
  for (var r = l; r < HD; r += 64u) { qs[r] = rowsum(r) * rs; }
  workgroupBarrier();
  for (var i = l; i < HALF; i += 64u) {       // each lane rotates its own pairs
    let c = cs[pos * HALF + i];
    let x0 = qs[i];
    let x1 = qs[i + HALF];
    qs[i] = (x0 * c.x - x1 * c.y) * SCALE;
    qs[i + HALF] = (x1 * c.x + x0 * c.y) * SCALE;
  }
  if (k1 == pos + 1u) {               // this split holds pos: k and v of this token
    project(1u, kvh * HD, l);
    for (var r = l; r < HD; r += 64u) { ks[r] = rowsum(r) * rs; }
    workgroupBarrier();
    project(2u, kvh * HD, l);
    for (var r = l; r < HD; r += 64u) { vs[r] = rowsum(r) * rs; }
    workgroupBarrier();
    let w = h % G == 0u;
    for (var i = l; i < HALF; i += 64u) {
      let c = cs[pos * HALF + i];
      let x0 = ks[i];
      let x1 = ks[i + HALF];
      let r0 = x0 * c.x - x1 * c.y;
      let r1 = x1 * c.x + x0 * c.y;
      ks[i] = r0;
      ks[i + HALF] = r1;
      if (w) {
        let b = (kvh * CAP + pos) * HD + i;
        kc[b] = r0;
        kc[b + HALF] = r1;
      }
    }
    if (w) {
      for (var d = l; d < HD; d += 64u) { vc[(kvh * CAP + pos) * HD + d] = vs[d]; }
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
      if (s < pos) {                  // cached key: a branch-free loop the compiler unrolls
        let b = (kvh * CAP + s) * HD;
        for (var i = 0u; i < HD; i++) { e += qs[i] * kc[b + i]; }
      } else {
        for (var i = 0u; i < HD; i++) { e += qs[i] * ks[i]; }
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
    // keys [c0, nc) are cached; key pos (if in this chunk) is this token's
    let nc = min(pos, c0 + n);
    for (var j = c0; j < nc; j++) {
      let pj = exp(sc[j - c0] - cm);
      ls += pj;
      for (var u = 0u; u < DPL; u++) {
        acc[u] += pj * vc[(kvh * CAP + j) * HD + min(l + u * 64u, HD - 1u)];
      }
    }
    if (nc < c0 + n) {
      let pj = exp(sc[pos - c0] - cm);
      ls += pj;
      for (var u = 0u; u < DPL; u++) { acc[u] += pj * vs[min(l + u * 64u, HD - 1u)]; }
    }
    m = cm;
    workgroupBarrier();
  }
  for (var u = 0u; u < DPL; u++) {
    let d = l + u * 64u;
    if (d < HD) {
      if (NS == 1u) { o[h * HD + d] = acc[u] / ls; }
      else { o[(h * NS + sp) * (HD + 2u) + d] = acc[u]; }
    }
  }
  if (NS > 1u && l == 0u) {
    o[(h * NS + sp) * (HD + 2u) + HD] = m;
    o[(h * NS + sp) * (HD + 2u) + HD + 1u] = ls;
  }
}
