// Same contract as linear_row: one subgroup per output column (4 columns per
// workgroup of 128 on a 32-wide subgroup), two independent accumulators per
// lane (UNROLL) for more loads in flight, subgroupAdd reduction.  Needs `subgroups`.
// Any subgroup size works: columns are walked in uniform rounds over the grid.
${ENABLE}
${WDECL}
${BDECL}
@group(0) @binding(3) var<storage, read> a: array<${VT}>;
${YDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
const UNROLL: u32 = ${UNROLL}u;
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  let per = max(128u / sgs, 1u);
  let total = nwg.x * per;
  let rounds = (N + total - 1u) / total;
  let t0 = wg.y * TB;
  for (var r = 0u; r < rounds; r++) {
  let n = r * total + wg.x * per + l / sgs;
  let live = n < N;
  let nn = min(n, N - 1u);
  var acc: array<f32, ${TB}>;
  var k = lane;
  // UNROLL independent loads per lane per trip: more bytes in flight
  for (; k + (UNROLL - 1u) * sgs < K; k += UNROLL * sgs) {
    for (var u = 0u; u < UNROLL; u++) {
      let kk = k + u * sgs;
      let w0 = ldw_at(nn, kk);
      for (var j = 0u; j < TB; j++) {
        let t = min(t0 + j, p.T - 1u);
        acc[j] += mulv(w0, a[t * K + kk]);
      }
    }
  }
  for (; k < K; k += sgs) {
    let w0 = ldw_at(nn, k);
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      acc[j] += mulv(w0, a[t * K + k]);
    }
  }
  for (var j = 0u; j < TB; j++) {
    let s = subgroupAdd(acc[j]);
    if (live && lane == 0u && t0 + j < p.T) { store(t0 + j, n, s); }
  }
  }
}
