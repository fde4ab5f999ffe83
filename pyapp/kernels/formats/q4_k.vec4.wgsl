// GGUF Q4_K (see q4_k.wgsl), vec4 loader: values 4i .. 4i+3 (one u32 of nibbles).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn sm${N}(base: u32, j: u32) -> vec2f {          // (scale, min) of sub-block j of super-block word base
  let a = ${N}[base + 1u];
  let m = ${N}[base + 2u];
  let k = (j & 3u) * 8u;
  if (j < 4u) { return vec2f(f32((a >> k) & 63u), f32((m >> k) & 63u)); }
  let hi = ${N}[base + 3u] >> k;
  return vec2f(f32((hi & 15u) | ((((a >> k) >> 6u) & 3u) << 4u)),
               f32(((hi >> 4u) & 15u) | ((((m >> k) >> 6u) & 3u) << 4u)));
}
fn ld${N}(i: u32) -> vec4f {
  let base = (i >> 6u) * 36u;
  let r = (i & 63u) * 4u;                      // first value of the four inside the super-block
  let sb = r >> 5u;
  let l = r & 31u;
  let dm = unpack2x16float(${N}[base]);
  let s = sm${N}(base, sb);
  let q = (${N}[base + 4u + (sb >> 1u) * 8u + (l >> 2u)] >> ((sb & 1u) * 4u)) & 0x0F0F0F0Fu;
  let v = vec4f(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u));
  return (dm.x * s.x) * v - dm.y * s.y;
}
