// GGUF Q6_K super-blocks of 256 values, 210 bytes: 128 bytes ql (low 4 bits), 64 bytes qh
// (2 high bits), 16 int8 scales (one per 16 values), f16 d.  In half n, value 32k + l
// (k = 0..3, l = 0..31) takes its low bits from ql[64n + l + 32 (k & 1)] (low nibble for
// k < 2, high for k >= 2) and its high bits from bits 2k..2k+1 of qh[32n + l];
// x = (d * scale) * (q - 32).  Blocks start on 2-byte boundaries.  Scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn byte${N}(o: u32) -> u32 { return (${N}[o >> 2u] >> ((o & 3u) * 8u)) & 255u; }
fn ds${N}(base: u32, r: u32) -> f32 {            // d * scale of value r of the super-block at base
  let d = unpack2x16float(${N}[(base + 208u) >> 2u])[((base + 208u) >> 1u) & 1u];
  let sc = bitcast<i32>(byte${N}(base + 192u + (r >> 4u)) << 24u) >> 24u;
  return d * f32(sc);
}
fn ld${N}(i: u32) -> f32 {
  let base = (i >> 8u) * 210u;
  let r = i & 255u;
  let n = r >> 7u;
  let k = (r >> 5u) & 3u;
  let l = r & 31u;
  let lo = (byte${N}(base + 64u * n + l + 32u * (k & 1u)) >> ((k >> 1u) * 4u)) & 15u;
  let hi = (byte${N}(base + 128u + 32u * n + l) >> (2u * k)) & 3u;
  return ds${N}(base, r) * (f32(lo | (hi << 4u)) - 32.0);
}
