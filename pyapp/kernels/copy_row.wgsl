// Plain copy of W floats (used by benchmarks and to stage rows).
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
const W: u32 = ${W}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= W || p.T == 0u) { return; }
  dst[i] = src[i];
}
