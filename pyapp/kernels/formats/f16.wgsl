// f16 weights read as u32 pairs (no shader-f16 needed), scalar loader: value i.
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn ld${N}(i: u32) -> f32 { return unpack2x16float(${N}[i >> 1u])[i & 1u]; }
