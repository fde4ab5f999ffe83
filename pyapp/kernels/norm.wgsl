// RMSNorm (LAYER = 0) or LayerNorm (LAYER = 1) over rows of width D; one
// workgroup of WG per row (WG = 1: a plain loop, best without cheap barriers).
// In place when IN and OUT are the same buffer (then only `y` is bound).
${WDECL}
${BDECL}
${XDECL}
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const D: u32 = ${D}u;
const WG: u32 = ${WG}u;
const EPS: f32 = ${EPS};
const LAYER: bool = ${LAYER};
const ROW0_LAST: bool = ${LASTROW};
var<workgroup> red: array<f32, ${WG}>;
fn reduce(v: f32, l: u32) -> f32 {
  red[l] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let t = wg.x;
  let live = t < p.T;
  let tt = min(t, p.T - 1u);
  var src = tt * D;
  var dst = tt * D;
  if (ROW0_LAST) { src = (p.T - 1u) * D; dst = 0u; }
  var mean = 0.0;
  if (LAYER) {
    var s = 0.0;
    for (var k = l; k < D; k += WG) { s += ldx(src + k); }
    mean = reduce(s, l) / f32(D);
  }
  var q = 0.0;
  for (var k = l; k < D; k += WG) { let c = ldx(src + k) - mean; q += c * c; }
  let inv = 1.0 / sqrt(reduce(q, l) / f32(D) + EPS);
  if (live && (!ROW0_LAST || t == 0u)) {
    for (var k = l; k < D; k += WG) { y[dst + k] = (ldx(src + k) - mean) * inv * ldw(k) + ldb(k); }
  }
}
