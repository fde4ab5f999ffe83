// Scaled dot-product attention, one invocation per (query row t, head h),
// online softmax in one pass over the keys.  Grouped-query: head h reads kv
// head h / (H / HKV).  CAUSAL: keys are the layer's cache [HKV, CAP, HD] up to
// pos0 + t; otherwise the step's own k, v [T, HKV*HD].
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
fn kv_index(kvh: u32, s: u32, d: u32) -> u32 {
  if (CAUSAL) { return (kvh * CAP + s % max(CAP, 1u)) * HD + d; }   // position s in slot s mod CAP
  return (s * HKV + kvh) * HD + d;
}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let id = g.x;
  let t = id / H;
  if (t >= p.T) { return; }
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
  var l = 0.0;
  for (var s = S0; s < S; s++) {
    let ko = kv_index(kvh, s, 0u);
    var sc = 0.0;
    for (var d = 0u; d < HD; d++) { sc += qv[d] * kk[ko + d]; }
    let mn = max(m, sc);
    let c = exp(m - mn);
    let e = exp(sc - mn);
    l = l * c + e;
    for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * c + e * vv[ko + d]; }
    m = mn;
  }
  let inv = 1.0 / l;
  let yo = (t * H + h) * HD;
  for (var d = 0u; d < HD; d++) { y[yo + d] = acc[d] * inv; }
}
