// Same contract as attention.wgsl, one workgroup of 64 per (query row, head):
// each lane runs an online softmax over keys l, l+64, ..., then the lanes'
// partial states are merged (max, rescale, sums) through workgroup memory,
// CH output dims at a time.  For real GPUs, where one serial invocation per
// head leaves the machine idle.
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kk: array<f32>;
@group(0) @binding(3) var<storage, read> vv: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const H: u32 = ${H}u;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const CAP: u32 = ${CAP}u;
const SCALE: f32 = ${SCALE};
const CAUSAL: bool = ${CAUSAL};
const WIN: u32 = ${WIN}u;          // sliding window (0: none): keys pos - WIN + 1 .. pos
// SEG: the step packs several sequences (segments); seg_at(2t), seg_at(2t + 1) = first and end
// row of row t's segment; seg_at(SEGT + 2b), seg_at(SEGT + 2b + 1) = those of segment b.
${SEGDECL}
const WG: u32 = 64u;
const CH: u32 = 16u;
var<workgroup> red: array<f32, 64>;
var<workgroup> sh: array<f32, 1024>;
fn kv_index(kvh: u32, s: u32, d: u32) -> u32 {
  if (CAUSAL) { return (kvh * CAP + s % max(CAP, 1u)) * HD + d; }   // position s in slot s mod CAP
  return (s * HKV + kvh) * HD + d;
}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let id = wg.x;
  let live = id / H < p.T;
  let t = min(id / H, p.T - 1u);
  let h = id % H;
  let kvh = h / (H / HKV);
  var S = p.T;
  var S0 = 0u;
  if (CAUSAL) { S = p.pos0 + t + 1u; }
  if (CAUSAL && WIN > 0u && S > WIN) { S0 = S - WIN; }
  if (SEG) { S0 = seg_at(2u * t); S = seg_at(2u * t + 1u); }
  let qo = (t * H + h) * HD;
  var qv: array<f32, ${HD}>;
  for (var d = 0u; d < HD; d++) { qv[d] = q[qo + d] * SCALE; }
  var acc: array<f32, ${HD}>;
  var m = -3.0e38;
  var ls = 0.0;
  for (var s = S0 + l; s < S; s += WG) {
    let ko = kv_index(kvh, s, 0u);
    var sc = 0.0;
    for (var d = 0u; d < HD; d++) { sc += qv[d] * kk[ko + d]; }
    let mn = max(m, sc);
    let c = exp(m - mn);
    let e = exp(sc - mn);
    ls = ls * c + e;
    for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * c + e * vv[ko + d]; }
    m = mn;
  }
  red[l] = m;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st >> 1u) {
    if (l < st) { red[l] = max(red[l], red[l + st]); }
    workgroupBarrier();
  }
  let M = red[0];
  workgroupBarrier();
  let c = exp(m - M);
  red[l] = ls * c;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st >> 1u) {
    if (l < st) { red[l] += red[l + st]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  let yo = (t * H + h) * HD;
  for (var c0 = 0u; c0 < HD; c0 += CH) {
    for (var j = 0u; j < CH; j++) {
      if (c0 + j < HD) { sh[l * CH + j] = acc[c0 + j] * c; }
    }
    workgroupBarrier();
    if (live && l < CH && c0 + l < HD) {
      var s = 0.0;
      for (var r = 0u; r < WG; r++) { s += sh[r * CH + l]; }
      y[yo + c0 + l] = s * inv;
    }
    workgroupBarrier();
  }
}
