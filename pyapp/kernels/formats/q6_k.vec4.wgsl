// GGUF Q6_K (see q6_k.wgsl), vec4 loader: values 4i .. 4i+3 (4 bytes of ql and 4 of qh at even
// offsets, one scale).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn u32at${N}(o: u32) -> u32 {                 // 4 bytes at an even byte offset
  let lo = ${N}[o >> 2u];
  return select((lo >> 16u) | (${N}[(o >> 2u) + 1u] << 16u), lo, (o & 3u) == 0u);
}
fn ld${N}(i: u32) -> vec4f {
  let base = (i >> 6u) * 210u;
  let r = (i & 63u) * 4u;                      // first value of the four inside the super-block
  let n = r >> 7u;
  let k = (r >> 5u) & 3u;
  let l = r & 31u;
  let lo = (u32at${N}(base + 64u * n + l + 32u * (k & 1u)) >> ((k >> 1u) * 4u)) & 0x0F0F0F0Fu;
  let hi = (u32at${N}(base + 128u + 32u * n + l) >> (2u * k)) & 0x03030303u;
  let q = lo | (hi << 4u);
  let d = unpack2x16float(${N}[(base + 208u) >> 2u])[((base + 208u) >> 1u) & 1u];
  let o = base + 192u + (r >> 4u);
  let sc = bitcast<i32>(((${N}[o >> 2u] >> ((o & 3u) * 8u)) & 255u) << 24u) >> 24u;
  let v = vec4f(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u));
  return (d * f32(sc)) * (v - 32.0);
}
