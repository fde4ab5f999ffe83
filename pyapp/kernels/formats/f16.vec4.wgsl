// f16 weights, vec4 loader: values 4i .. 4i+3 from two u32.
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec2<u32>>;
fn ld${N}(i: u32) -> vec4f { let q = ${N}[i]; return vec4f(unpack2x16float(q.x), unpack2x16float(q.y)); }
