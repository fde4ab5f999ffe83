// GGUF Q5_0 (see q5_0.wgsl), vec4 loader: values 4i .. 4i+3 (4 nibbles of 4 bytes at an even
// offset, their 4 high bits from qh).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn u32at${N}(o: u32) -> u32 {                 // 4 bytes at an even byte offset
  let lo = ${N}[o >> 2u];
  return select((lo >> 16u) | (${N}[(o >> 2u) + 1u] << 16u), lo, (o & 3u) == 0u);
}
fn ld${N}(i: u32) -> vec4f {
  let base = (i >> 3u) * 22u;
  let j = (i & 7u) * 4u;                       // first value of the four inside the block
  let d = unpack2x16float(${N}[base >> 2u])[(base >> 1u) & 1u];
  let h = (u32at${N}(base + 2u) >> j) & 15u;
  let q = (u32at${N}(base + 6u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0F0F0F0Fu;
  let v = vec4u(q & 15u, (q >> 8u) & 15u, (q >> 16u) & 15u, q >> 24u)
        | (((vec4u(h) >> vec4u(0u, 1u, 2u, 3u)) & vec4u(1u)) << vec4u(4u));
  return d * (vec4f(v) - 16.0);
}
