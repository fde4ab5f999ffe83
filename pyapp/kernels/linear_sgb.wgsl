// GEMV over Q4_1 blocks laid out like llama.cpp's mul_mat_vec_q4_1: R output columns per
// subgroup; a lane takes one (block b, word j) unit per trip: one u32 of nibbles (values
// 4j..4j+3 in the low nibbles, 16+4j..16+4j+3 in the high ones) and the block's (d, m), dots
// the 8 quants with two vec4 of the input and applies d and m once:
//   y += d * sum(q * x) + m * sum(x).
// The input vec4s (and sum(x)) are loaded once per unit and reused for the R columns; U units
// per trip (unrolled: U independent weight loads in flight per lane and column).  Same
// contract as linear_sg otherwise (NORM: the input's RMSNorm folded in; PAIR: gate/up with
// SiLU(g)*u).  Needs `subgroups`; any subgroup size works (uniform rounds over the grid).
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
  let per = max(128u / sgs, 1u);
  let total = nwg.x * per * R;
  let rounds = (N + total - 1u) / total;
  let t0 = wg.y * TB;
  for (var rd = 0u; rd < rounds; rd++) {
  let n0 = rd * total + (wg.x * per + l / sgs) * R;
  var acc: array<f32, ${RTB}>;
  var acc2: array<f32, ${RTB}>;
  var ss: array<f32, ${TB}>;
  for (var u0 = lane; u0 < NB * 4u; u0 += U * sgs) {
    for (var uu = 0u; uu < U; uu++) {
    let u = u0 + uu * sgs;
    if (u >= NB * 4u) { break; }
    let b = u >> 2u;
    let j = u & 3u;
    var xl: array<vec4f, ${TB}>;
    var xh: array<vec4f, ${TB}>;
    var sx: array<f32, ${TB}>;
    for (var t = 0u; t < TB; t++) {
      let o = min(t0 + t, p.T - 1u) * K + b * 8u + j;
      let al = a[o];
      let ah = a[o + 4u];
      if (NORM) { ss[t] += dot(al, al) + dot(ah, ah); }
      xl[t] = scl(al, b * 8u + j);
      xh[t] = scl(ah, b * 8u + 4u + j);
      sx[t] = dot(xl[t] + xh[t], vec4f(1.0));
    }
    for (var r = 0u; r < R; r++) {
      let n = min(n0 + r, N - 1u);
      let dm = dmw_at(n, b);
      let q = qsw_at(n, b, j);
      let lo = nib(q);
      let hi = nib(q >> 4u);
      let d = dm.x * 255.0;
      for (var t = 0u; t < TB; t++) {
        acc[r * TB + t] += d * (dot(lo, xl[t]) + dot(hi, xh[t])) + dm.y * sx[t];
      }
      if (PAIR) {
        let dm2 = dmw2_at(n, b);
        let q2 = qsw2_at(n, b, j);
        let lo2 = nib(q2);
        let hi2 = nib(q2 >> 4u);
        let d2 = dm2.x * 255.0;
        for (var t = 0u; t < TB; t++) {
          acc2[r * TB + t] += d2 * (dot(lo2, xl[t]) + dot(hi2, xh[t])) + dm2.y * sx[t];
        }
      }
    }
    }
  }
  for (var t = 0u; t < TB; t++) {
    var q = 0.0;
    if (NORM) { q = subgroupAdd(ss[t]); }
    for (var r = 0u; r < R; r++) {
      let s = subgroupAdd(acc[r * TB + t]);
      var s2 = 0.0;
      if (PAIR) { s2 = subgroupAdd(acc2[r * TB + t]); }
      if (n0 + r < N && lane == 0u && t0 + t < p.T) {
        if (PAIR) { store2(t0 + t, n0 + r, fin(s, q), fin(s2, q)); }
        else { store(t0 + t, n0 + r, fin(s, q)); }
      }
    }
  }
  }
}
