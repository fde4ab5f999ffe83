// ADECL of a GEMV whose input is one decode row's split attention (T = 1; the o-projection):
// the NS partial softmax states (acc[HD], m, l per head and split, binding 3) of
// attention_split / attention_qkv are merged into workgroup memory `a` by every workgroup
// before its columns, so no attention_merge dispatch. Splits past the current position hold
// no key and are skipped (attention_qkv does not write them).
@group(0) @binding(3) var<storage, read> attp: array<f32>;
var<workgroup> a: array<${VT}, ${KV}>;
var<workgroup> cw: array<f32, ${HNS}>;      // per head and split: exp(m - max) / sum of weights
const NORM: bool = false;
const AWG: bool = true;
const MH: u32 = ${H}u;
const MHD: u32 = ${HD}u;
const MNS: u32 = ${NS}u;
const MSL: u32 = ${SL}u;
fn scl(v: ${VT}, k: u32) -> ${VT} { return v; }
fn fin(v: f32, ss: f32) -> f32 { return v; }

fn merged(e: u32, na: u32) -> f32 {
  let h = e / MHD;
  let d = e % MHD;
  var s = 0.0;
  for (var j = 0u; j < na; j++) { s += attp[(h * MNS + j) * (MHD + 2u) + d] * cw[h * MNS + j]; }
  return s;
}

fn prologue(l: u32, nl: u32) {
  let na = min(MNS, p.pos0 / MSL + 1u);       // splits holding keys 0..pos0
  for (var h = l; h < MH; h += nl) {          // the exps once per (head, split), not per value
    var m = -3.0e38;
    for (var j = 0u; j < na; j++) { m = max(m, attp[(h * MNS + j) * (MHD + 2u) + MHD]); }
    var sl = 0.0;
    for (var j = 0u; j < na; j++) {
      let b = (h * MNS + j) * (MHD + 2u);
      let c = exp(attp[b + MHD] - m);
      cw[h * MNS + j] = c;
      sl += attp[b + MHD + 1u] * c;
    }
    for (var j = 0u; j < na; j++) { cw[h * MNS + j] /= sl; }
  }
  workgroupBarrier();
  for (var i = l; i < ${KV}u; i += nl) { a[i] = ${PUT}; }
}
