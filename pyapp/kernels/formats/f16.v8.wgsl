// f16 weights, 8-value loader: values 8i .. 8i+7 from one 16-byte load (the `sgh` GEMV).
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec4<u32>>;
fn ld${N}(i: u32) -> mat2x4f {
  let q = ${N}[i];
  return mat2x4f(vec4f(unpack2x16float(q.x), unpack2x16float(q.y)), vec4f(unpack2x16float(q.z), unpack2x16float(q.w)));
}
