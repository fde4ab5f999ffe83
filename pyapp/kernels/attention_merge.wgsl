// Merge the NS partial softmax states (acc[HD], m, l) of attention_split.wgsl into the
// attention output y [T, H*HD]; one workgroup of 64 per (row, head). Empty splits carry
// m = -3e38, l = 0 and weigh nothing.
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
const HD: u32 = ${HD}u;
const NS: u32 = ${NS}u;
const H: u32 = ${H}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let id = wg.x;
  if (id / H >= p.T) { return; }
  var M = -3.0e38;
  for (var s = 0u; s < NS; s++) { M = max(M, part[(id * NS + s) * (HD + 2u) + HD]); }
  var L = 0.0;
  for (var s = 0u; s < NS; s++) {
    let b = (id * NS + s) * (HD + 2u);
    L += part[b + HD + 1u] * exp(part[b + HD] - M);
  }
  for (var d = l; d < HD; d += 64u) {
    var a = 0.0;
    for (var s = 0u; s < NS; s++) {
      let b = (id * NS + s) * (HD + 2u);
      a += part[b + d] * exp(part[b + HD] - M);
    }
    y[id * HD + d] = a / L;
  }
}
