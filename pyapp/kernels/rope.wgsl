// Rotate-half RoPE in place on q [T, H*HD] and k [T, HKV*HD], positions pos0 + t.
// cos/sin come from a table computed on the host in float64: [positions, HALF, 2].
@group(0) @binding(1) var<storage, read> cs: array<vec2f>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
const H: u32 = ${H}u;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const HALF: u32 = ${HALF}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let id = g.x;
  let per_t = (H + HKV) * HALF;
  let t = id / per_t;
  if (t >= p.T) { return; }
  let r = id % per_t;
  let h = r / HALF;
  let i = r % HALF;
  let c = cs[(p.pos0 + t) * HALF + i];
  if (h < H) {
    let o = t * H * HD + h * HD + i;
    let x0 = q[o];
    let x1 = q[o + HALF];
    q[o] = x0 * c.x - x1 * c.y;
    q[o + HALF] = x1 * c.x + x0 * c.y;
  } else {
    let o = t * HKV * HD + (h - H) * HD + i;
    let x0 = k[o];
    let x1 = k[o + HALF];
    k[o] = x0 * c.x - x1 * c.y;
    k[o + HALF] = x1 * c.x + x0 * c.y;
  }
}
