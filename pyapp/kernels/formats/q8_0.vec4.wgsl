// GGUF Q8_0 (see q8_0.wgsl), vec4 loader: values 4i .. 4i+3 (4 bytes at an even offset:
// one u32, or the halves of two).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(i: u32) -> vec4f {
  let b0 = (i >> 3u) * 34u;
  let d = unpack2x16float(${N}[b0 >> 2u])[(b0 >> 1u) & 1u];
  let o = b0 + 2u + (i & 7u) * 4u;
  let lo = ${N}[o >> 2u];
  let u = select((lo >> 16u) | (${N}[(o >> 2u) + 1u] << 16u), lo, (o & 3u) == 0u);
  let s = vec4<i32>(bitcast<i32>(u << 24u), bitcast<i32>(u << 16u), bitcast<i32>(u << 8u), bitcast<i32>(u)) >> vec4<u32>(24u);
  return vec4f(s) * d;
}
