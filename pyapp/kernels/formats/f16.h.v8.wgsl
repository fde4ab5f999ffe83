// f16 weights read as f16 (shader-f16), 8-value loader: values 8i .. 8i+7 in one 16-byte load.
enable f16;
@group(0) @binding(${B}) var<storage, read> ${N}: array<mat2x4<f16>>;
fn ld${N}(i: u32) -> mat2x4f { return mat2x4f(${N}[i]); }
