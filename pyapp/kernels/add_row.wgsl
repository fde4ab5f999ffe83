// x[t, :] += table[row(t), :] with row(t) = pos0 + t (POS; with SEG, t's position inside its
// segment) or 0 (token type 0), for the rows that fall in this chunk's [R0, R0 + R) (tables
// larger than one binding are split by rows).
${WDECL}
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
const D: u32 = ${D}u;
const POS: bool = ${POS};
const R0: u32 = ${R0}u;
const R: u32 = ${R}u;
// SEG: the step packs several sequences (segments); seg_at(2t), seg_at(2t + 1) = first and end
// row of row t's segment; seg_at(SEGT + 2b), seg_at(SEGT + 2b + 1) = those of segment b.
${SEGDECL}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x;
  if (i >= p.T * D) { return; }
  let t = i / D;
  var r = 0u;
  if (POS) { r = p.pos0 + t; }
  if (POS && SEG) { r = t - seg_at(2u * t); }
  if (r < R0 || r >= R0 + R) { return; }
  x[i] += ldw((r - R0) * D + i % D);
}
