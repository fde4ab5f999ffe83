// Pick the next token from logits [V] on the GPU; one workgroup of 256.  Writes one u32.
// greedy: one argmax pass (ties -> lowest id).  Otherwise exactly the definition of
// pyapp/sampling.py::sample_numpy, with no sorting:
//   z = logits / temp (f32), e_i = exp2q(z_i - zmax) (the deterministic exp below);
//   tk = the k-th largest key(z) (top_k > 0): 32 bisection steps on the u32 key, each a count pass;
//   tp = the largest key whose kept mass (tokens with key >= max(tp, tk)) is >= top_p * S, S the
//        mass of the top-k set: 32 bisection steps, each a mass pass;
//   draw: u = uniform(seed, step) (lowbias32), c = kept mass, first id in ID ORDER whose
//        cumulative mass > u * c.
// Every float sum has a fixed association that numpy reproduces bit for bit: lane l owns the
// contiguous ids [l*CH, l*CH + CH) and adds them in order; the 256 lane sums are combined by a
// tree (s = 128, 64, ..., 1: r[l] += r[l + s]) for the bisection masses and by a Hillis-Steele
// inclusive scan for the draw.
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
// NP > 0: greedy reads the NP (value bits, id) partial argmaxes of argmax_part.wgsl (binding 3)
${PARTDECL}
const V: u32 = ${V}u;
const NP: u32 = ${NP}u;
const CH: u32 = (V + 255u) / 256u;
var<workgroup> rf: array<f32, 256>;
var<workgroup> ru: array<u32, 256>;
var<workgroup> thr: u32;
var<workgroup> lastk: atomic<u32>;
fn better(za: f32, ia: u32, zb: f32, ib: u32) -> bool { return za > zb || (za == zb && ia < ib); }
fn hash32(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u; x *= 0x7FEB352Du; x ^= x >> 15u; x *= 0x846CA68Bu; x ^= x >> 16u;
  return x;
}
// f32 -> u32 with integer order == float order
fn key(z: f32) -> u32 {
  let b = bitcast<u32>(z);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
// exp(x) for x <= 0, bit-identical to sampling.py::exp_q: y = x * log2(e) * 2^23 (one f32 multiply),
// Y = trunc(y), 2^Y/2^23 = 2^n * prod over the 23 fraction bits of 2^(2^-b) (multiplications only,
// so no fused multiply-add can change the result); 0 below 2^-126.
fn expq(x: f32) -> f32 {
  let y = x * 12102203.0;
  if (!(y >= -1056964608.0)) { return 0.0; }
  let Y = i32(y);
  let n = Y >> 23u;
  let F = u32(Y & 0x7FFFFF);
  var q = 1.0;
  q = q * select(1.0, 1.4142135381698608, (F & 0x400000u) != 0u);
  q = q * select(1.0, 1.1892070770263672, (F & 0x200000u) != 0u);
  q = q * select(1.0, 1.0905077457427979, (F & 0x100000u) != 0u);
  q = q * select(1.0, 1.0442737340927124, (F & 0x80000u) != 0u);
  q = q * select(1.0, 1.0218971967697144, (F & 0x40000u) != 0u);
  q = q * select(1.0, 1.0108892917633057, (F & 0x20000u) != 0u);
  q = q * select(1.0, 1.0054298639297485, (F & 0x10000u) != 0u);
  q = q * select(1.0, 1.002711296081543, (F & 0x8000u) != 0u);
  q = q * select(1.0, 1.001354694366455, (F & 0x4000u) != 0u);
  q = q * select(1.0, 1.0006771087646484, (F & 0x2000u) != 0u);
  q = q * select(1.0, 1.0003385543823242, (F & 0x1000u) != 0u);
  q = q * select(1.0, 1.000169277191162, (F & 0x800u) != 0u);
  q = q * select(1.0, 1.000084638595581, (F & 0x400u) != 0u);
  q = q * select(1.0, 1.0000423192977905, (F & 0x200u) != 0u);
  q = q * select(1.0, 1.0000211000442505, (F & 0x100u) != 0u);
  q = q * select(1.0, 1.00001060962677, (F & 0x80u) != 0u);
  q = q * select(1.0, 1.0000052452087402, (F & 0x40u) != 0u);
  q = q * select(1.0, 1.0000026226043701, (F & 0x20u) != 0u);
  q = q * select(1.0, 1.000001311302185, (F & 0x10u) != 0u);
  q = q * select(1.0, 1.0000007152557373, (F & 0x8u) != 0u);
  q = q * select(1.0, 1.0000003576278687, (F & 0x4u) != 0u);
  q = q * select(1.0, 1.0000001192092896, (F & 0x2u) != 0u);
  q = q * select(1.0, 1.0000001192092896, (F & 0x1u) != 0u);
  return ldexp(q, n);
}
// tree reduction of rf (result in rf[0], read after the final barrier)
fn tree_f(l: u32) {
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s) { rf[l] = rf[l] + rf[l + s]; }
    workgroupBarrier();
  }
}
fn tree_u(l: u32) {
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s) { ru[l] = ru[l] + ru[l + s]; }
    workgroupBarrier();
  }
}
// this lane's mass of the tokens with key >= t, in id order
fn lane_mass(l: u32, t: u32, zmax: f32) -> f32 {
  var s = 0.0;
  let hi = min(l * CH + CH, V);
  for (var i = l * CH; i < hi; i++) {
    let z = logits[i] / p.temp;
    if (key(z) >= t) { s = s + expq(z - zmax); }
  }
  return s;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32) {
  if (p.greedy != 0u) {
    var best_z = -3.4e38;
    var best_i = 0xFFFFFFFFu;
    if (NP > 0u) {
      for (var b = l; b < NP; b += 256u) {
        let z = bitcast<f32>(part_at(2u * b));
        let i = part_at(2u * b + 1u);
        if (better(z, i, best_z, best_i)) { best_z = z; best_i = i; }
      }
    } else {
      for (var i = l; i < V; i += 256u) {
        let z = logits[i];
        if (better(z, i, best_z, best_i)) { best_z = z; best_i = i; }
      }
    }
    rf[l] = best_z;
    ru[l] = best_i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
      if (l < s && better(rf[l + s], ru[l + s], rf[l], ru[l])) { rf[l] = rf[l + s]; ru[l] = ru[l + s]; }
      workgroupBarrier();
    }
    if (l == 0u) { out[0] = ru[0]; }
    return;
  }
  let lo = l * CH;
  let hi = min(lo + CH, V);
  // zmax
  var m = -3.4e38;
  for (var i = lo; i < hi; i++) { m = max(m, logits[i] / p.temp); }
  rf[l] = m;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (l < s) { rf[l] = max(rf[l], rf[l + s]); }
    workgroupBarrier();
  }
  let zmax = rf[0];
  workgroupBarrier();
  // tk: the largest t with count(key >= t) >= top_k
  var tk = 0u;
  if (p.top_k != 0u && p.top_k < V) {
    for (var b = 0u; b < 32u; b++) {
      let cand = tk | (0x80000000u >> b);
      var c = 0u;
      for (var i = lo; i < hi; i++) { c += select(0u, 1u, key(logits[i] / p.temp) >= cand); }
      ru[l] = c;
      tree_u(l);
      if (ru[0] >= p.top_k) { tk = cand; }
      workgroupBarrier();
    }
  }
  // tp: the largest t >= tk with mass(key >= t) >= top_p * S
  var t = tk;
  if (p.top_p < 1.0) {
    rf[l] = lane_mass(l, tk, zmax);
    tree_f(l);
    let goal = p.top_p * rf[0];
    workgroupBarrier();
    var tp = 0u;
    for (var b = 0u; b < 32u; b++) {
      let cand = tp | (0x80000000u >> b);
      rf[l] = lane_mass(l, max(cand, tk), zmax);
      tree_f(l);
      if (rf[0] >= goal) { tp = cand; }
      workgroupBarrier();
    }
    t = max(tp, tk);
  }
  // draw: scan of the lane masses in id order
  var s = 0.0;
  var last = 0xFFFFFFFFu;
  for (var i = lo; i < hi; i++) {
    let z = logits[i] / p.temp;
    if (key(z) >= t) { s = s + expq(z - zmax); last = i; }
  }
  if (l == 0u) { atomicStore(&lastk, 0u); }
  rf[l] = s;
  workgroupBarrier();
  if (last != 0xFFFFFFFFu) { atomicMax(&lastk, last); }
  for (var off = 1u; off < 256u; off = off << 1u) {
    var v = rf[l];
    if (l >= off) { v = v + rf[l - off]; }
    workgroupBarrier();
    rf[l] = v;
    workgroupBarrier();
  }
  let c = rf[255];
  let h = hash32(p.seed * 0x9E3779B9u + p.step);
  let uc = f32(h >> 8u) / 16777216.0 * c;
  var excl = 0.0;
  if (l > 0u) { excl = rf[l - 1u]; }
  if (excl <= uc && uc < rf[l]) {
    var cum = excl;
    var pick = last;
    for (var i = lo; i < hi; i++) {
      let z = logits[i] / p.temp;
      if (key(z) >= t) {
        cum = cum + expq(z - zmax);
        if (cum > uc) { pick = i; break; }
      }
    }
    out[0] = pick;
  }
  if (l == 0u && !(uc < c)) { out[0] = atomicLoad(&lastk); }
}
