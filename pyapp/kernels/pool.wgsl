// Mean over the T rows, then (NORM) divide by the L2 norm: y is [1, D].
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
const D: u32 = ${D}u;
const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32) {
  var q = 0.0;
  for (var d = l; d < D; d += WG) {
    var s = 0.0;
    for (var t = 0u; t < p.T; t++) { s += x[t * D + d]; }
    let m = s / f32(p.T);
    y[d] = m;
    q += m * m;
  }
  red[l] = q;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  if (${NORM}) {
    let inv = 1.0 / max(sqrt(red[0]), 1e-12);
    for (var d = l; d < D; d += WG) { y[d] = y[d] * inv; }
  }
}
