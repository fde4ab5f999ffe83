// Pick the next token from logits [V] on the GPU; one workgroup of 256.
// greedy: argmax (ties -> lowest id).  Otherwise the reference algorithm of
// pyapp/sampling.py: z = logits / temp, the top-k (k <= KMAX; top_k = 0 means
// the KMAX most likely) in descending order by repeated selection, softmax
// normalised over the whole vocabulary when top_k = 0, top-p prefix, inverse
// CDF at u = uniform(seed, step) (same lowbias32 hash).  Writes one u32.
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
const V: u32 = ${V}u;
const KMAX: u32 = ${KMAX}u;
var<workgroup> bz: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
var<workgroup> cz: array<f32, ${KMAX}>;
var<workgroup> ci: array<u32, ${KMAX}>;
fn better(za: f32, ia: u32, zb: f32, ib: u32) -> bool { return za > zb || (za == zb && ia < ib); }
fn hash32(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u; x *= 0x7FEB352Du; x ^= x >> 15u; x *= 0x846CA68Bu; x ^= x >> 16u;
  return x;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32) {
  var K = 1u;
  if (p.greedy == 0u) {
    K = KMAX;
    if (p.top_k != 0u) { K = min(p.top_k, KMAX); }
    K = min(K, V);
  }
  var pz = 0.0;
  var pi = 0u;
  for (var r = 0u; r < K; r++) {
    var best_z = -3.4e38;
    var best_i = 0xFFFFFFFFu;
    for (var i = l; i < V; i += 256u) {
      let z = logits[i];
      let ok = r == 0u || z < pz || (z == pz && i > pi);
      if (ok && better(z, i, best_z, best_i)) { best_z = z; best_i = i; }
    }
    bz[l] = best_z;
    bi[l] = best_i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
      if (l < s && better(bz[l + s], bi[l + s], bz[l], bi[l])) { bz[l] = bz[l + s]; bi[l] = bi[l + s]; }
      workgroupBarrier();
    }
    pz = bz[0];
    pi = bi[0];
    if (l == 0u) { cz[r] = pz; ci[r] = pi; }
    workgroupBarrier();
  }
  if (p.greedy != 0u) {
    if (l == 0u) { out[0] = ci[0]; }
    return;
  }
  // softmax denominator: over the whole vocabulary when top_k is off
  let z0 = cz[0] / p.temp;
  var s = 0.0;
  if (p.top_k == 0u) {
    for (var i = l; i < V; i += 256u) { s += exp(logits[i] / p.temp - z0); }
  }
  bz[l] = s;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st = st >> 1u) {
    if (l < st) { bz[l] += bz[l + st]; }
    workgroupBarrier();
  }
  if (l != 0u) { return; }
  var total = bz[0];
  if (p.top_k != 0u) {
    total = 0.0;
    for (var j = 0u; j < K; j++) { total += exp(cz[j] / p.temp - z0); }
  }
  var keep = K;
  if (p.top_p < 1.0) {
    var c = 0.0;
    for (var j = 0u; j < K; j++) {
      c += exp(cz[j] / p.temp - z0) / total;
      if (c >= p.top_p) { keep = j + 1u; break; }
    }
  }
  var c = 0.0;
  for (var j = 0u; j < keep; j++) { c += exp(cz[j] / p.temp - z0) / total; cz[j] = c; }
  let h = hash32(p.seed * 0x9E3779B9u + p.step);
  let u = f32(h >> 8u) / 16777216.0 * c;
  var pick = keep - 1u;
  for (var j = 0u; j < keep; j++) { if (cz[j] > u) { pick = j; break; } }
  out[0] = ci[pick];
}
