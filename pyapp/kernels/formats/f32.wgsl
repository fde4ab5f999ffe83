// f32 weights, scalar loader: value i of the tensor (row-major).
@group(0) @binding(${B}) var<storage, read> ${N}: array<f32>;
fn ld${N}(i: u32) -> f32 { return ${N}[i]; }
