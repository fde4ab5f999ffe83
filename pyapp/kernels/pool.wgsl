// Mean over the T rows, then (NORM) divide by the L2 norm: y is [1, D].  With SEG, workgroup b
// pools the rows of segment b into y[b, :] (padding never exists: segments are packed).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
const D: u32 = ${D}u;
const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;
// SEG: the step packs several sequences (segments); seg_at(2t), seg_at(2t + 1) = first and end
// row of row t's segment; seg_at(SEGT + 2b), seg_at(SEGT + 2b + 1) = those of segment b.
${SEGDECL}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3u) {
  var t0 = 0u;
  var t1 = p.T;
  if (SEG) { t0 = seg_at(SEGT + 2u * wg.x); t1 = seg_at(SEGT + 2u * wg.x + 1u); }
  let yo = wg.x * D;
  var q = 0.0;
  for (var d = l; d < D; d += WG) {
    var s = 0.0;
    for (var t = t0; t < t1; t++) { s += x[t * D + d]; }
    let m = s / f32(t1 - t0);
    y[yo + d] = m;
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
    for (var d = l; d < D; d += WG) { y[yo + d] = y[yo + d] * inv; }
  }
}
