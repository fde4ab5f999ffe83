// Elementwise activation over T rows of width W: silu_mul (two inputs), gelu
// (erf), gelu_tanh.  In place when the output is the input.
${DECL}
const W: u32 = ${W}u;
${ACT}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * W) { return; }
  ${BODY}
}
