// Transposed weights (GPT-2 Conv1D, W is [K, N]): y[t, n] = sum_k a[t, k] W[k, n] + b[n].
// Neighbouring invocations read neighbouring weights: coalesced without a reduction.
// A weight split by rows over several bindings is one dispatch per chunk of input rows
// [K0, K0 + K) of the KA in all; ACC: continue the sums the previous chunk stored in y.
${WDECL}
${BDECL}
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const N: u32 = ${N}u;
const K: u32 = ${K}u;
const KA: u32 = ${KA}u;
const K0: u32 = ${K0}u;
const TB: u32 = ${TB}u;
const ACC: bool = ${ACC};
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x;
  let t0 = g.y * TB;
  if (n >= N || t0 >= p.T) { return; }
  var acc: array<f32, ${TB}>;
  if (ACC) {
    for (var j = 0u; j < TB; j++) {
      if (t0 + j < p.T) { acc[j] = y[(t0 + j) * N + n]; }
    }
  }
  for (var k = 0u; k < K; k++) {
    let wv = ldw(k * N + n);
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      acc[j] += wv * a[t * KA + K0 + k];
    }
  }
  let bv = ldb(n);
  for (var j = 0u; j < TB; j++) {
    if (t0 + j < p.T) { y[(t0 + j) * N + n] = acc[j] + bv; }
  }
}
