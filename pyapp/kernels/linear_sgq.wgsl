// Decode GEMV over Q4_1 blocks with the input quantized to int8 in the kernel and integer dot
// products (llama.cpp's mul_mat_vec_q with a q8_1 activation).  Each workgroup first
// quantizes the input row into workgroup memory, one block of 32 values per lane (with the
// RMSNorm's weight folded in when NORM; its 1/rms is a scalar applied in the store, so it does
// not change the quantization): 8 u32 of packed int8 q = round(127 x / max|x|) and the block's
// (d = max|x| / 127, sum(x) / 4).  Then the weight loop of linear_sgb (R columns per subgroup,
// U (block b, word j) units per trip, every load of a trip before its arithmetic, written out
// by wgsl.sgq_code): a word of nibbles w gives lo = w & 0x0F0F0F0F (values 4j..4j+3) and
// hi = (w >> 4) & 0x0F0F0F0F (16+4j..16+4j+3), nibbles 0..15 being valid int8, and
//   y += d_w * d_x * (dot4I8Packed(lo, xq[2b][j]) + dot4I8Packed(hi, xq[2b + 1][j])) + m_w * sum(x) / 4
// (4 units per block each add a quarter of m_w * sum(x), exact in f32): one 4-byte word of
// weights meets 8 bytes of input and 2 integer dot instructions instead of linear_sgb's two
// vec4 of f32 input (32 bytes), 2 unpacks and 8 FMAs.
// Quantizing in every workgroup re-reads the input row (K f32, from L2) per workgroup; a
// separate quantize dispatch would cost a dispatch (~6 us of host encoding each on the H200,
// more than a 4096-wide GEMV's GPU time) and a barrier between the two; rounds over columns
// (fewer workgroups than N / (4R): lower.gemv's `sgq_groups`) amortize it further.
// WIDE (`sgqwR[uU]`, wgsl.sgqw_code): a unit is a run of four blocks, 80 bytes = 5 vec4<u32>
// of the weights as stored (formats/q4_1.w.wgsl: K % 128 == 0), against 8 vec4 of packed input
// read once for the R columns: 16-byte loads where the word form issues 4-byte ones (a Q4_1
// block is 20 bytes, never 16-aligned alone), 5R per unit instead of 8R per block.
// AWG: the input is built in workgroup memory first (`prologue`: a merged split attention).
// T = 1 only (prefill runs linear_sgb); the row must fit workgroup memory (lower.sgq_fits).
// Needs `subgroups` and the WGSL language feature packed_4x8_integer_dot_product.
${ENABLE}
${WDECL}
${BDECL}
${ADECL}
${YDECL}
${PAIRDECL}
const N: u32 = ${N}u;
const K: u32 = ${KV}u;         // input row in vec4 (= its packed int8 words)
const NB: u32 = ${NB}u;        // blocks per weight row
const YS: u32 = ${YS}u;
const N0: u32 = ${N0}u;
const TB: u32 = 1u;
const R: u32 = ${R}u;
const U: u32 = ${U}u;
const NU: u32 = ${NU};         // units per row: words (4 per block), or WIDE runs of 4 blocks
// the input row as int8, 4 per word: block b's low-nibble partners (values 0..15) at
// xq[xqi(b, 0)], its high ones (16..31) at xq[xqi(b, 1)]; the word form keeps them in block order
// (2b + k), WIDE as 8 planes of one vec4 per run (plane 2i + k of run g at (2i + k) NU + g), so
// the 32 lanes reading plane h of runs g..g+31 hit consecutive vec4 (block order put them 128
// bytes apart: every lane on the same banks, a 32-way conflict per read)
var<workgroup> xq: array<vec4<u32>, NB * 2u>;
var<workgroup> xb: array<vec2f, NB>;       // per block (at xbi(b)): (d, sum(x) / 4)
fn xqi(b: u32, k: u32) -> u32 { return ${XQI}; }
fn xbi(b: u32) -> u32 { return ${XBI}; }
var<workgroup> xss: array<f32, 32>;        // NORM: sum(a^2) per subgroup (>= 4 lanes each)
const M4: u32 = 0x0F0F0F0Fu;
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  if (AWG) { prologue(l, 128u); workgroupBarrier(); }   // an input built in workgroup memory
  let per = max(128u / sgs, 1u);
  var part = 0.0;
  for (var b = l; b < NB; b += 128u) {
    let o = b * 8u;
    let a0 = a[o]; let a1 = a[o + 1u]; let a2 = a[o + 2u]; let a3 = a[o + 3u];
    let a4 = a[o + 4u]; let a5 = a[o + 5u]; let a6 = a[o + 6u]; let a7 = a[o + 7u];
    if (NORM) {
      part += dot(a0, a0) + dot(a1, a1) + dot(a2, a2) + dot(a3, a3) + dot(a4, a4) + dot(a5, a5)
            + dot(a6, a6) + dot(a7, a7);
    }
    let v0 = scl(a0, o); let v1 = scl(a1, o + 1u); let v2 = scl(a2, o + 2u); let v3 = scl(a3, o + 3u);
    let v4 = scl(a4, o + 4u); let v5 = scl(a5, o + 5u); let v6 = scl(a6, o + 6u); let v7 = scl(a7, o + 7u);
    let mx = max(max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))), max(max(abs(v4), abs(v5)), max(abs(v6), abs(v7))));
    let amax = max(max(mx.x, mx.y), max(mx.z, mx.w));
    let s = select(0.0, 127.0 / amax, amax > 0.0);
    // pack4xI8, not pack4x8snorm: lavapipe (wgpu 0.32) sign-extends a negative lane of
    // pack4x8snorm over the bytes above it
    xq[xqi(b, 0u)] = vec4u(pack4xI8(vec4i(round(v0 * s))), pack4xI8(vec4i(round(v1 * s))),
                       pack4xI8(vec4i(round(v2 * s))), pack4xI8(vec4i(round(v3 * s))));
    xq[xqi(b, 1u)] = vec4u(pack4xI8(vec4i(round(v4 * s))), pack4xI8(vec4i(round(v5 * s))),
                            pack4xI8(vec4i(round(v6 * s))), pack4xI8(vec4i(round(v7 * s))));
    xb[xbi(b)] = vec2f(amax / 127.0, 0.25 * dot((v0 + v1) + (v2 + v3) + (v4 + v5) + (v6 + v7), vec4f(1.0)));
  }
  var wss = 0.0;                              // the whole row's sum of squares (NORM)
  if (NORM) {
    let sp = subgroupAdd(part);
    if (lane == 0u) { xss[l / sgs] = sp; }
  }
  workgroupBarrier();
  if (NORM) {
    for (var i = 0u; i < per; i++) { wss += xss[i]; }
  }
  let total = nwg.x * per * R;
  let rounds = (N + total - 1u) / total;
  let t0 = 0u;
  for (var rd = 0u; rd < rounds; rd++) {
  let c0 = rd * total + (wg.x * per + l / sgs) * R;   // first column of this subgroup
${DECL}
  ss0 = select(0.0, wss, lane == 0u);         // the reduction's subgroupAdd gives wss back
  for (var u0 = lane; u0 < NU; u0 += U * sgs) {
${BODY}
  }
${REDUCE}
  }
}
