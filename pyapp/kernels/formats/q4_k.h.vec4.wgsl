// GGUF Q4_K super-blocks as f16 structs (see q4_k.h.wgsl), vec4 loader: values 4i .. 4i+3.
enable f16;
struct Q4K${N} { dm: vec2<f16>, sc: array<u32, 3>, qs: array<u32, 32> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q4K${N}>;
fn sm${N}(s: u32, j: u32) -> vec2f {
  let a = ${N}[s].sc[0];
  let m = ${N}[s].sc[1];
  let k = (j & 3u) * 8u;
  if (j < 4u) { return vec2f(f32((a >> k) & 63u), f32((m >> k) & 63u)); }
  let hi = ${N}[s].sc[2] >> k;
  return vec2f(f32((hi & 15u) | ((((a >> k) >> 6u) & 3u) << 4u)),
               f32(((hi >> 4u) & 15u) | ((((m >> k) >> 6u) & 3u) << 4u)));
}
fn ld${N}(i: u32) -> vec4f {
  let s = i >> 6u;
  let r = (i & 63u) * 4u;                      // first value of the four inside the super-block
  let sb = r >> 5u;
  let l = r & 31u;
  let dm = vec2f(${N}[s].dm);
  let c = sm${N}(s, sb);
  let q = (${N}[s].qs[(sb >> 1u) * 8u + (l >> 2u)] >> ((sb & 1u) * 4u)) & 0x0F0F0F0Fu;
  let v = vec4f(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u));
  return (dm.x * c.x) * v - dm.y * c.y;
}
