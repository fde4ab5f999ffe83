// GGUF Q4_1 blocks as f16 structs (see q4_1.h.wgsl), vec4 loader: values 4i .. 4i+3.
enable f16;
struct Q41${N} { dm: vec2<f16>, qs: array<u32, 4> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q41${N}>;
fn ld${N}(i: u32) -> vec4f {
  let b = i >> 3u;
  let j = (i & 7u) * 4u;                       // first value of the four inside the block
  let dm = vec2f(${N}[b].dm);
  let q = (${N}[b].qs[(j & 15u) >> 2u] >> ((j >> 4u) * 4u)) & 0x0F0F0F0Fu;
  let v = vec4f(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u));
  return v * dm.x + dm.y;
}
