// linear_row over a block format: one output column per invocation, a whole block of 32
// weights decoded per trip (scales once per block, not once per vec4).  Fast on CPU adapters.
${WDECL}
${BDECL}
@group(0) @binding(3) var<storage, read> a: array<vec4f>;
${YDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;
const NB: u32 = ${NB}u;
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x;
  let t0 = g.y * TB;
  if (n >= N || t0 >= p.T) { return; }
  var acc: array<f32, ${TB}>;
  for (var b = 0u; b < NB; b++) {
    let wv = ldw(n * NB + b);
    for (var j = 0u; j < TB; j++) {
      let ao = min(t0 + j, p.T - 1u) * K + b * 8u;
      var s = 0.0;
      for (var c = 0u; c < 8u; c++) { s += dot(wv[c], a[ao + c]); }
      acc[j] += s;
    }
  }
  for (var j = 0u; j < TB; j++) {
    if (t0 + j < p.T) { store(t0 + j, n, acc[j]); }
  }
}
