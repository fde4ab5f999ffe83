// GGUF Q4_1 (see q4_1.wgsl), 16-byte loader of the `sgqw` GEMV (linear_sgq.wgsl, WIDE): four
// consecutive blocks are 80 bytes = 5 vec4<u32>, the `g`th run of four of the tensor at vec4
// 5g..5g+4; word 5i of those 20 is block i's (d, m), words 5i+1..5i+4 its nibbles.  Rows of
// K % 128 == 0 values hold whole runs, and a tensor (chunk) starts its own buffer, so the loads
// stay 16-byte aligned with the blocks as stored.  No f16 form: a 20-byte struct has no vec4
// view, so f16 storage reads these same words (d, m through unpack2x16float).
@group(0) @binding(${B}) var<storage, read> ${N}: array<vec4<u32>>;
fn quad${N}(g: u32, i: u32) -> vec4<u32> { return ${N}[g * 5u + i]; }
