// Same contract as linear_row: one subgroup per output column (4 columns per
// workgroup of 128 on a 32-wide subgroup), two independent accumulators per
// lane (UNROLL) for more loads in flight, subgroupAdd reduction.  Needs `subgroups`.
// Any subgroup size works: columns are walked in uniform rounds over the grid.
// NORM: the input's RMSNorm folded in (scl/fin); PAIR: two weights per column (store2);
// AWG: the input is built in workgroup memory first (`prologue`: a merged split attention).
${ENABLE}
${WDECL}
${BDECL}
${ADECL}
${YDECL}
${PAIRDECL}
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
  if (AWG) { prologue(l, 128u); workgroupBarrier(); }   // an input built in workgroup memory
  for (var r = 0u; r < rounds; r++) {
  let n = r * total + wg.x * per + l / sgs;
  let live = n < N;
  let nn = min(n, N - 1u);
  var acc: array<f32, ${TB}>;
  var acc2: array<f32, ${TB}>;
  var ss: array<f32, ${TB}>;
  var k = lane;
  // UNROLL independent loads per lane per trip: more bytes in flight
  for (; k + (UNROLL - 1u) * sgs < K; k += UNROLL * sgs) {
    for (var u = 0u; u < UNROLL; u++) {
      let kk = k + u * sgs;
      let w0 = ldw_at(nn, kk);
      var w1 = w0;
      if (PAIR) { w1 = ldw2_at(nn, kk); }
      for (var j = 0u; j < TB; j++) {
        let t = min(t0 + j, p.T - 1u);
        let av = a[t * K + kk];
        let sv = scl(av, kk);
        acc[j] += mulv(w0, sv);
        if (PAIR) { acc2[j] += mulv(w1, sv); }
        if (NORM) { ss[j] += mulv(av, av); }
      }
    }
  }
  for (; k < K; k += sgs) {
    let w0 = ldw_at(nn, k);
    var w1 = w0;
    if (PAIR) { w1 = ldw2_at(nn, k); }
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      let av = a[t * K + k];
      let sv = scl(av, k);
      acc[j] += mulv(w0, sv);
      if (PAIR) { acc2[j] += mulv(w1, sv); }
      if (NORM) { ss[j] += mulv(av, av); }
    }
  }
  for (var j = 0u; j < TB; j++) {
    let s = subgroupAdd(acc[j]);
    var s2 = 0.0;
    var q = 0.0;
    if (PAIR) { s2 = subgroupAdd(acc2[j]); }
    if (NORM) { q = subgroupAdd(ss[j]); }
    if (live && lane == 0u && t0 + j < p.T) {
      if (PAIR) { store2(t0 + j, n, fin(s, q), fin(s2, q)); }
      else { store(t0 + j, n, fin(s, q)); }
    }
  }
  }
}
