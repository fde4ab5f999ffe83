// Greedy decoding's first level: workgroup b writes the argmax (value, id; ties -> lowest id)
// of logits [b * CH, b * CH + CH) to part[2b], part[2b + 1]; sample.wgsl's greedy branch then
// reduces the NP partials. One workgroup walking a 262,144-entry vocabulary took 212 us on an
// H200; this spreads the read over NP workgroups. Does nothing when sampling (p.greedy = 0).
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<u32>;
const V: u32 = ${V}u;
const CH: u32 = ${CH}u;
var<workgroup> rf: array<f32, 256>;
var<workgroup> ru: array<u32, 256>;
fn better(za: f32, ia: u32, zb: f32, ib: u32) -> bool { return za > zb || (za == zb && ia < ib); }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  if (p.greedy == 0u) { return; }
  var best_z = -3.4e38;
  var best_i = 0xFFFFFFFFu;
  let hi = min(wg.x * CH + CH, V);
  for (var i = wg.x * CH + l; i < hi; i += 256u) {
    let z = logits[i];
    if (better(z, i, best_z, best_i)) { best_z = z; best_i = i; }
  }
  rf[l] = best_z;
  ru[l] = best_i;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s && better(rf[l + s], ru[l + s], rf[l], ru[l])) { rf[l] = rf[l + s]; ru[l] = ru[l + s]; }
    workgroupBarrier();
  }
  if (l == 0u) { part[2u * wg.x] = bitcast<u32>(rf[0]); part[2u * wg.x + 1u] = ru[0]; }
}
