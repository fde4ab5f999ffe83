// GGUF Q5_0 blocks of 32 values, 22 bytes: f16 d, u32 qh (bit j: the 5th bit of value j),
// 16 bytes of nibbles (value j < 16 is the low nibble of byte j, value 16 + j its high
// nibble); x = d * (q - 16).  Blocks start on 2-byte boundaries.  Scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn u32at${N}(o: u32) -> u32 {                 // 4 bytes at an even byte offset
  let lo = ${N}[o >> 2u];
  return select((lo >> 16u) | (${N}[(o >> 2u) + 1u] << 16u), lo, (o & 3u) == 0u);
}
fn ld${N}(i: u32) -> f32 {
  let base = (i >> 5u) * 22u;
  let j = i & 31u;
  let d = unpack2x16float(${N}[base >> 2u])[(base >> 1u) & 1u];
  let qh = u32at${N}(base + 2u);
  let o = base + 6u + (j & 15u);
  let q = ((${N}[o >> 2u] >> ((o & 3u) * 8u + (j >> 4u) * 4u)) & 15u) | (((qh >> j) & 1u) << 4u);
  return d * (f32(q) - 16.0);
}
