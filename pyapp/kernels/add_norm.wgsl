// Residual add + RMSNorm in one pass: x += r (ADD; in place, row by row; without ADD
// `r` is not bound) then
// y = x / rms(x) * w. One workgroup of 256 per row: a real GPU's RMSNorm over 4,096
// values in one 64-lane loop was latency-bound (31 µs on the H200).
${WDECL}
${RDECL}
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const D: u32 = ${D}u;
const EPS: f32 = ${EPS};
const ADD: bool = ${ADD};
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let t = wg.x;
  if (t >= p.T) { return; }           // uniform per workgroup
  let b = t * D;
  var q = 0.0;
  for (var k = l; k < D; k += 256u) {
    var u = x[b + k];
    if (ADD) { u += ldr(b + k); x[b + k] = u; }
    q += u * u;
  }
  red[l] = q;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(D) + EPS);
  for (var k = l; k < D; k += 256u) { y[b + k] = x[b + k] * inv * ldw(k); }
}
