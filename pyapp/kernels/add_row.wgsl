// x[t, :] += table[row(t), :] with row(t) = pos0 + t (POS) or 0 (token type 0).
${WDECL}
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
const D: u32 = ${D}u;
const POS: bool = ${POS};
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * D) { return; }
  let t = i / D;
  var r = 0u;
  if (POS) { r = p.pos0 + t; }
  x[i] += ldw(r * D + i % D);
}
