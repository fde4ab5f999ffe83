// GGUF Q4_1 blocks of 32 values, 20 bytes = 5 u32: [f16 d, f16 m], then 16 bytes of nibbles
// (value j < 16 is the low nibble of byte j, value 16 + j its high nibble); x = d * q + m.
// Rows hold whole blocks, so value i lives in block i / 32.  Scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(i: u32) -> f32 {
  let b = (i >> 5u) * 5u;
  let j = i & 31u;
  let dm = unpack2x16float(${N}[b]);
  let q = (${N}[b + 1u + ((j & 15u) >> 2u)] >> ((j & 3u) * 8u + (j >> 4u) * 4u)) & 15u;
  return dm.x * f32(q) + dm.y;
}
