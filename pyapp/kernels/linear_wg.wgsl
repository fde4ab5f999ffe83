// Same contract as linear_row: one workgroup of 64 per output column, strided
// coalesced loads over k, shared-memory tree reduction.  For real GPUs.
// Rows are walked in rounds over the grid (a dispatch has at most 65,535 workgroups
// per dimension; an lm head has up to 128,256 rows). NORM: the input's RMSNorm is
// folded in (scl/fin); PAIR: two weights per column (gate/up), stored through store2;
// AWG: the input is built in workgroup memory first (`prologue`: a merged split attention).
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
var<workgroup> part: array<f32, ${PART}>;
var<workgroup> part2: array<f32, ${PART}>;
var<workgroup> part3: array<f32, ${PART}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let t0 = wg.y * TB;
  if (AWG) { prologue(l, 64u); workgroupBarrier(); }   // an input built in workgroup memory
  for (var n = wg.x; n < N; n += nwg.x) {
  var acc: array<f32, ${TB}>;
  var acc2: array<f32, ${TB}>;
  var ss: array<f32, ${TB}>;
  for (var k = l; k < K; k += 64u) {
    let wv = ldw_at(n, k);
    var wv2 = wv;
    if (PAIR) { wv2 = ldw2_at(n, k); }
    for (var j = 0u; j < TB; j++) {
      let t = min(t0 + j, p.T - 1u);
      let av = a[t * K + k];
      let sv = scl(av, k);
      acc[j] += mulv(wv, sv);
      if (PAIR) { acc2[j] += mulv(wv2, sv); }
      if (NORM) { ss[j] += mulv(av, av); }
    }
  }
  for (var j = 0u; j < TB; j++) {
    part[j * 64u + l] = acc[j];
    if (PAIR) { part2[j * 64u + l] = acc2[j]; }
    if (NORM) { part3[j * 64u + l] = ss[j]; }
  }
  workgroupBarrier();
  for (var s = 32u; s > 0u; s = s >> 1u) {
    if (l < s) {
      for (var j = 0u; j < TB; j++) {
        part[j * 64u + l] += part[j * 64u + l + s];
        if (PAIR) { part2[j * 64u + l] += part2[j * 64u + l + s]; }
        if (NORM) { part3[j * 64u + l] += part3[j * 64u + l + s]; }
      }
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    for (var j = 0u; j < TB; j++) {
      if (t0 + j < p.T) {
        let q = part3[j * 64u];
        if (PAIR) { store2(t0 + j, n, fin(part[j * 64u], q), fin(part2[j * 64u], q)); }
        else { store(t0 + j, n, fin(part[j * 64u], q)); }
      }
    }
  }
  workgroupBarrier();
  }
}
