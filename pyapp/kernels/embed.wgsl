// x[t, :] = table[id_t - R0, :] for the ids that fall in this chunk's rows
// [R0, R0 + R) (tables larger than one binding are split by rows).
${WDECL}
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
const D: u32 = ${D}u;
const R0: u32 = ${R0}u;
const R: u32 = ${R}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * D) { return; }
  let t = i / D;
  let id = ids[t];
  if (id < R0 || id >= R0 + R) { return; }
  x[i] = ldw((id - R0) * D + i % D);
}
