// GEMV with wide loads: each lane reads a unit of 8 weights (16 bytes of f16: one load; f32:
// two) per trip, R output columns per subgroup, U units per trip.  The input's two vec4 of
// a unit are loaded once and reused for the R columns: a plain vec4 f16 GEMV issues 16 bytes
// of input per 8 bytes of weights, which bounds it by load instructions, not DRAM.
// The trip body is written out by wgsl.sgw_code (named registers, every load of a trip before
// its arithmetic: no private arrays a driver may keep in local memory).  Trip counts are the
// same for every lane (units past the row end are clamped loads times zero), so the
// subgroupAdd reductions sit in uniform control flow.  Same contract as linear_sg otherwise
// (NORM: the input's RMSNorm folded in; PAIR: gate/up with act(g)*u in the store; AWG: the
// input built in workgroup memory first).  Needs `subgroups`; any subgroup size works.
${ENABLE}
${WDECL}
${BDECL}
${ADECL}
${YDECL}
${PAIRDECL}
${GROUPDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;         // units of 8 values per weight row (input rows: 2K vec4)
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
const R: u32 = ${R}u;
const U: u32 = ${U}u;
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u${LANE_ARGS}) {
${LANE_LET}
  let per = max(128u / sgs, 1u);
  let total = nwg.x * per * R;
  let rounds = (N + total - 1u) / total;
  let t0 = wg.y * TB;
  if (AWG) { prologue(l, 128u); workgroupBarrier(); }   // an input built in workgroup memory
  for (var rd = 0u; rd < rounds; rd++) {
  let c0 = rd * total + (wg.x * per + l / sgs) * R;   // first column of this subgroup
${DECL}
  for (var u0 = 0u; u0 < K; u0 += U * sgs) {
${BODY}
  }
${REDUCE}
  }
}
