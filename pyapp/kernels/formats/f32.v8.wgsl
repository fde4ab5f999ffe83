// f32 weights, 8-value loader: values 8i .. 8i+7 (two 16-byte loads; the `sgh` GEMV).
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec4f>;
fn ld${N}(i: u32) -> mat2x4f { return mat2x4f(${N}[2u * i], ${N}[2u * i + 1u]); }
