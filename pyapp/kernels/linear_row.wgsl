// y[t, N0 + n] = sum_k a[t, k] * W[n, k] (+ b[N0 + n]); one output column per
// (ldw_at / store come from the host: one weight, or several fused GEMVs over one input)
//
// invocation, TB rows of t per invocation (weights read once per TB rows).
// Fast where invocations are cheap and barriers are not (SwiftShader, lavapipe).
${WDECL}
${BDECL}
${ADECL}
${YDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x;
  let t0 = g.y * TB;
  if (n >= N || t0 >= p.T) { return; }
  var acc: array<f32, ${TB}>;
  for (var k = 0u; k < K; k++) {
    let wv = ldw_at(n, k);
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      acc[j] += mulv(wv, a[t * K + k]);
    }
  }
  for (var j = 0u; j < TB; j++) {
    if (t0 + j < p.T) { store(t0 + j, n, acc[j]); }
  }
}
