// GGUF Q4_1 (see q4_1.wgsl), vec4 loader: values 4i .. 4i+3, two u32 loads (scales, nibbles).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(i: u32) -> vec4f {
  let b = (i >> 3u) * 5u;
  let j = (i & 7u) * 4u;                       // first value of the four inside the block
  let dm = unpack2x16float(${N}[b]);
  let q = (${N}[b + 1u + ((j & 15u) >> 2u)] >> ((j >> 4u) * 4u)) & 0x0F0F0F0Fu;
  let v = vec4f(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u));
  return v * dm.x + dm.y;
}
