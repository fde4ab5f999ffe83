// GGUF Q4_1 (see q4_1.wgsl) read with shader-f16: the 20-byte block as it is stored is a
// struct {d, m: vec2<f16>; 16 bytes of nibbles as 4 u32} (size 20, align 4), so d and m are
// typed loads, not unpacked from a u32.  Scalar loader: value i.
enable f16;
struct Q41${N} { dm: vec2<f16>, qs: array<u32, 4> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q41${N}>;
fn ld${N}(i: u32) -> f32 {
  let b = i >> 5u;
  let j = i & 31u;
  let dm = vec2f(${N}[b].dm);
  let q = (${N}[b].qs[(j & 15u) >> 2u] >> ((j & 3u) * 8u + (j >> 4u) * 4u)) & 15u;
  return dm.x * f32(q) + dm.y;
}
