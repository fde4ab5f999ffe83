// f16 weights read as f16 (shader-f16), scalar loader: value i.
enable f16;
@group(0) @binding(${B}) var<storage, read> ${N}: array<f16>;
fn ld${N}(i: u32) -> f32 { return f32(${N}[i]); }
