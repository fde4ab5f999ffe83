// GEMV over Q4_1 blocks laid out like llama.cpp's mul_mat_vec_q4_1: R output columns per
// subgroup; a lane takes U (block b, word j) units per trip: one u32 of nibbles each (values
// 4j..4j+3 in the low nibbles, 16+4j..16+4j+3 in the high ones) and the block's (d, m), dots
// the 8 quants with two vec4 of the input and applies d and m once:
//   y += d * sum(q * x) + m * sum(x).
// The input vec4s (and sum(x)) are loaded once per unit and reused for the R columns.  The
// trip body is written out by wgsl.sgb_code (R x U x TB named registers, every load of a trip
// issued before its arithmetic): no private arrays indexed by loop counters, which a driver may
// keep in local memory.  Units past the row end are clamped loads multiplied by zero.
// AWG: the input is built in workgroup memory first (`prologue`: a merged split attention).
// Same contract as linear_sg otherwise (NORM: the input's RMSNorm folded in; PAIR: gate/up
// with act(g)*u: SiLU or tanh GELU).  Needs `subgroups`; any subgroup size works (uniform rounds over the grid).
${ENABLE}
${WDECL}
${BDECL}
${ADECL}
${YDECL}
${PAIRDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;         // input row in vec4
const NB: u32 = ${NB}u;        // blocks per weight row
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = ${TB}u;
const R: u32 = ${R}u;
const U: u32 = ${U}u;
fn nib(q: u32) -> vec4f { return unpack4x8unorm(q & 0x0F0F0F0Fu); }   // 4 nibbles / 255
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  if (AWG) { prologue(l, 128u); workgroupBarrier(); }   // an input built in workgroup memory
  let per = max(128u / sgs, 1u);
  let total = nwg.x * per * R;
  let rounds = (N + total - 1u) / total;
  let t0 = wg.y * TB;
  for (var rd = 0u; rd < rounds; rd++) {
  let c0 = rd * total + (wg.x * per + l / sgs) * R;   // first column of this subgroup
${DECL}
  for (var u0 = lane; u0 < NB * 4u; u0 += U * sgs) {
${BODY}
  }
${REDUCE}
  }
}
