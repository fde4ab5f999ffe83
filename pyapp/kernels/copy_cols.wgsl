// dst[t, c] = src[t, C0 + c] for c < W (column split, GPT-2's fused qkv).
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
const W: u32 = ${W}u;
const SW: u32 = ${SW}u;
const C0: u32 = ${C0}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * W) { return; }
  let t = i / W;
  dst[i] = src[t * SW + C0 + i % W];
}
