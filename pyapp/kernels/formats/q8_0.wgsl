// GGUF Q8_0 blocks of 32 values, 34 bytes: f16 d, 32 x int8 q; x = d * q.  Blocks start on
// 2-byte boundaries, so bytes are picked out of u32 words.  Scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(i: u32) -> f32 {
  let b0 = (i >> 5u) * 34u;
  let d = unpack2x16float(${N}[b0 >> 2u])[(b0 >> 1u) & 1u];
  let o = b0 + 2u + (i & 31u);
  let byte = (${N}[o >> 2u] >> ((o & 3u) * 8u)) << 24u;
  return d * f32(bitcast<i32>(byte) >> 24u);
}
