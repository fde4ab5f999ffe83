// GGUF Q4_1 blocks as f16 structs (see q4_1.h.wgsl), block-word loader of the `sgb` GEMV.
enable f16;
struct Q41${N} { dm: vec2<f16>, qs: array<u32, 4> }
@group(0) @binding(${B}) var<storage, read> ${N}: array<Q41${N}>;
fn dm${N}(b: u32) -> vec2f { return vec2f(${N}[b].dm); }
fn qs${N}(b: u32, j: u32) -> u32 { return ${N}[b].qs[j]; }
