// A post-norm + the residual add in one pass (Gemma's `o = rms_norm(o); x += o`):
// x += r / rms(r) * w, r read twice and never written (its normed copy is dead after).
// One workgroup of 256 per row, like add_norm.
${WDECL}
@group(0) @binding(2) var<storage, read> r: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
const D: u32 = ${D}u;
const EPS: f32 = ${EPS};
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let t = wg.x;
  if (t >= p.T) { return; }           // uniform per workgroup
  let b = t * D;
  var q = 0.0;
  for (var k = l; k < D; k += 256u) { let u = r[b + k]; q += u * u; }
  red[l] = q;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(D) + EPS);
  for (var k = l; k < D; k += 256u) { x[b + k] = x[b + k] + r[b + k] * inv * ldw(k); }
}
