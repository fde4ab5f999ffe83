// Same contract as linear_row: R output columns per subgroup (R = 2..8), each lane
// keeps R x TB partial sums; the input a[t, k] is loaded once per k and reused from
// registers for the R weight rows, so a lane has R independent weight loads in
// flight per trip (K = 576: 4.5 vec4 trips per lane instead of 4.5 loads total).
// One subgroupAdd per (column, t).  Needs `subgroups`; any subgroup size works:
// groups of R columns are walked in uniform rounds over the grid.
${ENABLE}
${WDECL}
${BDECL}
${ADECL}
${YDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
const R: u32 = ${R}u;
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  let per = max(128u / sgs, 1u);
  let total = nwg.x * per * R;
  let rounds = (N + total - 1u) / total;
  let t0 = wg.y * TB;
  for (var rd = 0u; rd < rounds; rd++) {
  let n0 = rd * total + (wg.x * per + l / sgs) * R;
  var acc: array<f32, ${RTB}>;
  for (var k = lane; k < K; k += sgs) {
    var w: array<${VT}, ${R}>;
    for (var r = 0u; r < R; r++) { w[r] = ldw_at(min(n0 + r, N - 1u), k); }
    for (var j = 0u; j < TB; j++) {
      let av = a[min(t0 + j, p.T - 1u) * K + k];
      for (var r = 0u; r < R; r++) { acc[r * TB + j] += mulv(w[r], av); }
    }
  }
  for (var r = 0u; r < R; r++) {
    for (var j = 0u; j < TB; j++) {
      let s = subgroupAdd(acc[r * TB + j]);
      if (n0 + r < N && lane == 0u && t0 + j < p.T) { store(t0 + j, n0 + r, s); }
    }
  }
  }
}
