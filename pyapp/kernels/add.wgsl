// y = a + b over T rows of width W (in place into a when y is a).
${DECL}
const W: u32 = ${W}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * W) { return; }
  ${BODY}
}
