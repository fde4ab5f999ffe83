// The split choice's speed probe (pyapp/edge/split.py): an f32 GEMV of layer-like shape, one
// output row per invocation, vec4 loads.  ${ROWS} rows, ${COLS4} vec4 columns.
@group(0) @binding(0) var<storage, read> W: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let r = g.x;
  if (r >= ${ROWS}u) { return; }
  var s = 0.0;
  for (var i = 0u; i < ${COLS4}u; i++) { s += dot(W[r * ${COLS4}u + i], x[i]); }
  y[r] = s;
}
