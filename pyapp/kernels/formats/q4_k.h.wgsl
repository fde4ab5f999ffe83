// GGUF Q4_K (see q4_k.wgsl) read with shader-f16: the 144-byte super-block as stored is a
// struct {d, dmin: vec2<f16>; 12 bytes of 6-bit scales/mins as 3 u32; 128 bytes of nibbles as
// 32 u32} (size 144, align 4).  Scalar loader: value i.
enable f16;
struct Q4K${N} { dm: vec2<f16>, sc: array<u32, 3>, qs: array<u32, 32> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q4K${N}>;
fn sm${N}(s: u32, j: u32) -> vec2f {             // (scale, min) of sub-block j of super-block s
  let a = ${N}[s].sc[0];
  let m = ${N}[s].sc[1];
  let k = (j & 3u) * 8u;
  if (j < 4u) { return vec2f(f32((a >> k) & 63u), f32((m >> k) & 63u)); }
  let hi = ${N}[s].sc[2] >> k;
  return vec2f(f32((hi & 15u) | ((((a >> k) >> 6u) & 3u) << 4u)),
               f32(((hi >> 4u) & 15u) | ((((m >> k) >> 6u) & 3u) << 4u)));
}
fn ld${N}(i: u32) -> f32 {
  let s = i >> 8u;
  let r = i & 255u;
  let sb = r >> 5u;
  let l = r & 31u;
  let dm = vec2f(${N}[s].dm);
  let c = sm${N}(s, sb);
  let q = (${N}[s].qs[(sb >> 1u) * 8u + (l >> 2u)] >> ((l & 3u) * 8u + (sb & 1u) * 4u)) & 15u;
  return (dm.x * c.x) * f32(q) - dm.y * c.y;
}
