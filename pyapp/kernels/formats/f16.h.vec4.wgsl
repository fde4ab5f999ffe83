// f16 weights read as f16 (shader-f16), vec4 loader: values 4i .. 4i+3 in one 8-byte load.
enable f16;
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec4<f16>>;
fn ld${N}(i: u32) -> vec4f { return vec4f(${N}[i]); }
