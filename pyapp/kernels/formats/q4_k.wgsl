// GGUF Q4_K super-blocks of 256 values, 144 bytes = 36 u32: [f16 d, f16 dmin], 12 bytes of
// 6-bit (scale, min) pairs for 8 sub-blocks of 32, 128 bytes of nibbles (sub-blocks 2c and
// 2c+1 are the low and high nibbles of bytes 32c .. 32c+31);
// x = (d * scale) * q - dmin * min.  Scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn sm${N}(base: u32, j: u32) -> vec2f {          // (scale, min) of sub-block j of super-block word base
  let a = ${N}[base + 1u];                        // bytes 0..3: scales 0..3 (+ 2 high bits of 4..7)
  let m = ${N}[base + 2u];                        // bytes 4..7: mins 0..3 (+ 2 high bits of 4..7)
  let k = (j & 3u) * 8u;
  if (j < 4u) { return vec2f(f32((a >> k) & 63u), f32((m >> k) & 63u)); }
  let hi = ${N}[base + 3u] >> k;                  // bytes 8..11: low 4 bits of scales / mins 4..7
  return vec2f(f32((hi & 15u) | ((((a >> k) >> 6u) & 3u) << 4u)),
               f32(((hi >> 4u) & 15u) | ((((m >> k) >> 6u) & 3u) << 4u)));
}
fn ld${N}(i: u32) -> f32 {
  let base = (i >> 8u) * 36u;
  let r = i & 255u;
  let sb = r >> 5u;
  let l = r & 31u;
  let dm = unpack2x16float(${N}[base]);
  let s = sm${N}(base, sb);
  let q = (${N}[base + 4u + (sb >> 1u) * 8u + (l >> 2u)] >> ((l & 3u) * 8u + (sb & 1u) * 4u)) & 15u;
  return (dm.x * s.x) * f32(q) - dm.y * s.y;
}
