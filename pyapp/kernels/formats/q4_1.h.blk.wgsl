// GGUF Q4_1 blocks as f16 structs (see q4_1.h.wgsl), block loader: the 32 values of block b
// as 8 vec4 (values 0..15 the low nibbles, 16..31 the high ones).
enable f16;
struct Q41${N} { dm: vec2<f16>, qs: array<u32, 4> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q41${N}>;
fn ld${N}(b: u32) -> array<vec4f, 8> {
  let blk = ${N}[b];
  let dm = vec2f(blk.dm);
  let s = dm.x * 255.0;
  var out: array<vec4f, 8>;
  for (var j = 0u; j < 4u; j++) {
    let w = blk.qs[j];
    out[j] = unpack4x8unorm(w & 0x0F0F0F0Fu) * s + dm.y;
    out[j + 4u] = unpack4x8unorm((w >> 4u) & 0x0F0F0F0Fu) * s + dm.y;
  }
  return out;
}
