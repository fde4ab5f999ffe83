// RMSNorm of each run of G columns on its own (Gemma's per-head q/k norms): rows of width
// NG * G, one invocation per (row t, group g), weight of G values (ldw, offset included by
// the loader).  In place when IN and OUT are the same buffer (then only `y` is bound).
${WDECL}
${XDECL}
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const G: u32 = ${G}u;
const NG: u32 = ${NG}u;
const EPS: f32 = ${EPS};
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let r = gid.x;
  if (r >= p.T * NG) { return; }
  let o = r * G;
  var q = 0.0;
  for (var k = 0u; k < G; k++) { let c = ldx(o + k); q += c * c; }
  let inv = 1.0 / sqrt(q / f32(G) + EPS);
  for (var k = 0u; k < G; k++) { y[o + k] = ldx(o + k) * inv * ldw(k); }
}
