// Same contract as linear_row: one workgroup of 64 per output column, strided
// coalesced loads over k, shared-memory tree reduction.  For real GPUs.
${WDECL}
${BDECL}
@group(0) @binding(3) var<storage, read> a: array<${VT}>;
${YDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
var<workgroup> part: array<f32, ${PART}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let n = wg.x;
  let t0 = wg.y * TB;
  var acc: array<f32, ${TB}>;
  for (var k = l; k < K; k += 64u) {
    let wv = ldw_at(n, k);
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      acc[j] += mulv(wv, a[t * K + k]);
    }
  }
  for (var j = 0u; j < TB; j++) { part[j * 64u + l] = acc[j]; }
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (l < s) {
      for (var j = 0u; j < TB; j++) { part[j * 64u + l] += part[j * 64u + l + s]; }
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    for (var j = 0u; j < TB; j++) {
      if (t0 + j < p.T) { store(t0 + j, n, part[j * 64u]); }
    }
  }
}
