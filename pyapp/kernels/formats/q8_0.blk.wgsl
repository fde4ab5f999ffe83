// GGUF Q8_0 (see q8_0.wgsl), block loader: the 32 values of block b as 8 vec4.  The 34-byte
// block starts on a 2-byte boundary: 9 words cover it; d and each group of 4 int8 sit either
// word-aligned (block offset 2 mod 4) or across the halves of two words (offset 0 mod 4).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(b: u32) -> array<vec4f, 8> {
  let o = b * 34u;
  let w0 = o >> 2u;
  let odd = (o & 2u) != 0u;
  let d = unpack2x16float(${N}[w0])[select(0u, 1u, odd)];
  var out: array<vec4f, 8>;
  var prev = ${N}[w0];
  for (var j = 0u; j < 8u; j++) {
    let next = ${N}[w0 + 1u + j];
    let u = select((prev >> 16u) | (next << 16u), next, odd);
    let s = vec4<i32>(bitcast<i32>(u << 24u), bitcast<i32>(u << 16u), bitcast<i32>(u << 8u), bitcast<i32>(u)) >> vec4<u32>(24u);
    out[j] = vec4f(s) * d;
    prev = next;
  }
  return out;
}
