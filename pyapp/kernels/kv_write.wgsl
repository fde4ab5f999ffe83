// Append this step's k, v [T, HKV*HD] to the layer's cache [HKV, CAP, HD] at pos0 (position
// p in slot p mod CAP: a ring on sliding-window layers, the identity on full caches).
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const CAP: u32 = ${CAP}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let id = g.x;
  let W = HKV * HD;
  let t = id / W;
  if (t >= p.T) { return; }
  let r = id % W;
  let h = r / HD;
  let d = r % HD;
  let o = (h * CAP + (p.pos0 + t) % CAP) * HD + d;
  kc[o] = k[id];
  vc[o] = v[id];
}
