// GGUF Q4_1 (see q4_1.wgsl), block loader: the 32 values of block b as 8 vec4 (values
// 0..15 are the low nibbles, 16..31 the high ones), the scales unpacked once per block.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(b: u32) -> array<vec4f, 8> {
  let o = b * 5u;
  let dm = unpack2x16float(${N}[o]);
  let s = dm.x * 255.0;
  var out: array<vec4f, 8>;
  for (var j = 0u; j < 4u; j++) {
    let w = ${N}[o + 1u + j];
    out[j] = unpack4x8unorm(w & 0x0F0F0F0Fu) * s + dm.y;
    out[j + 4u] = unpack4x8unorm((w >> 4u) & 0x0F0F0F0Fu) * s + dm.y;
  }
  return out;
}
