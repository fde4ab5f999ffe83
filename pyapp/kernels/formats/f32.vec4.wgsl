// f32 weights, vec4 loader: values 4i .. 4i+3.
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec4f>;
fn ld${N}(i: u32) -> vec4f { return ${N}[i]; }
