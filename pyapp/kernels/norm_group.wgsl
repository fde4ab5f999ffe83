// RMSNorm of each run of G columns on its own (Gemma's per-head q/k norms): rows of width
// NG * G, one workgroup of WG per (row t, group g) (WG = 1: a plain loop, for CPU adapters),
// weight of G values (ldw, offset included by the loader). Lanes over the group's columns:
// one invocation walking all G columns twice left a GPU idle (59 us a dispatch on an H200).
// In place when IN and OUT are the same buffer (then only `y` is bound).
${WDECL}
${XDECL}
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const G: u32 = ${G}u;
const NG: u32 = ${NG}u;
const EPS: f32 = ${EPS};
const WG: u32 = ${WG}u;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let r = wg.x;                                      // (row t, group g) = r / NG, r % NG
  let o = r * G;
  let live = r < p.T * NG;
  var q = 0.0;
  if (live) {
    for (var k = l; k < G; k += WG) { let c = ldx(o + k); q += c * c; }
  }
  red[l] = q;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(G) + EPS);
  if (live) {
    for (var k = l; k < G; k += WG) { y[o + k] = ldx(o + k) * inv * ldw(k); }
  }
}
