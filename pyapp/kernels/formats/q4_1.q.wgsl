// GGUF Q4_1 (see q4_1.wgsl), block-word loader of the `sgb` GEMV (linear_sgb.wgsl): block
// b's (d, m) and word j (0..3) of its nibbles, dequantized by the kernel (d and m once per dot).
@group(0) @binding(${B}) var<storage, read> ${N}: array<u32>;
fn dm${N}(b: u32) -> vec2f { return unpack2x16float(${N}[b * 5u]); }
fn qs${N}(b: u32, j: u32) -> u32 { return ${N}[b * 5u + 1u + j]; }
