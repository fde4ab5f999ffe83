// RMSNorm of each run of G columns on its own (Gemma's per-head q/k norms): rows of width
// NG * G, one workgroup of WG per (row t, group g) (WG = 1: a plain loop, for CPU adapters),
// weight of G values (ldw, offset included by the loader). Lanes over the group's columns:
// one invocation walking all G columns twice left a GPU idle (59 us a dispatch on an H200).
// In place when IN and OUT are the same buffer (then only `y` is bound).
// A second tensor of rows NG2 * G (workgroups wg.y == 1: PAIRDECL's ldx2 / ldw2 / sty2, in
// place) normed in the same dispatch: q_norm and k_norm of a layer in one (NG2 = 0: none).
${WDECL}
${XDECL}
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
${PAIRDECL}
const G: u32 = ${G}u;
const NG: u32 = ${NG}u;
const EPS: f32 = ${EPS};
const WG: u32 = ${WG}u;
var<workgroup> red: array<f32, ${WG}>;
fn ld(two: bool, i: u32) -> f32 { if (two) { return ldx2(i); } return ldx(i); }
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let r = wg.x;                                      // (row t, group g) = r / ng, r % ng
  let two = wg.y == 1u;                              // uniform per workgroup
  let o = r * G;
  let live = r < p.T * select(NG, NG2, two);
  var q = 0.0;
  if (live) {
    for (var k = l; k < G; k += WG) { let c = ld(two, o + k); q += c * c; }
  }
  red[l] = q;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] += red[l + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(G) + EPS);
  if (live) {
    for (var k = l; k < G; k += WG) {
      if (two) { sty2(o + k, ld(two, o + k) * inv * ldw2(k)); }
      else { y[o + k] = ldx(o + k) * inv * ldw(k); }
    }
  }
}
