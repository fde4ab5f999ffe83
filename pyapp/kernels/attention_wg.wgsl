// Same contract as attention.wgsl, one workgroup of WG per (query row, head), the keys in
// tiles of WG: lanes over keys for the scores (one key's dot with q per lane), one max and
// one sum reduction per tile (an online softmax across tiles), then lanes over output dims
// (and KG key groups when HD < WG) for p.V, reading V rows coalesced. Only the keys of the
// window / written so far are read. (It was one key per lane with private q and accumulator
// rows of HD, spilled to memory, and a 16-step output merge: 239 us per Gemma window layer.)
@group(0) @binding(1) var<storage, read> q: array<f32>;
${KDECL}
@group(0) @binding(3) var<storage, read> vv: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const H: u32 = ${H}u;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const CAP: u32 = ${CAP}u;
const SCALE: f32 = ${SCALE};
const CAUSAL: bool = ${CAUSAL};
const WIN: u32 = ${WIN}u;          // sliding window (0: none): keys pos - WIN + 1 .. pos
// SEG: the step packs several sequences (segments); seg_at(2t), seg_at(2t + 1) = first and end
// row of row t's segment; seg_at(SEGT + 2b), seg_at(SEGT + 2b + 1) = those of segment b.
${SEGDECL}
const WG: u32 = 256u;
const HD4: u32 = (HD + 3u) / 4u;
const KG: u32 = max(1u, WG / HD);       // key groups of the p.V phase
const DPL: u32 = (HD + WG - 1u) / WG;   // output dims per lane
var<workgroup> qs: array<vec4f, HD4>;   // q * SCALE, zero padded
var<workgroup> pr: array<f32, WG>;      // the tile's probabilities
var<workgroup> red: array<f32, WG>;
fn kv_index(kvh: u32, s: u32, d: u32) -> u32 {
  if (CAUSAL) { return (kvh * CAP + s % max(CAP, 1u)) * HD + d; }   // position s in slot s mod CAP
  return (s * HKV + kvh) * HD + d;
}
fn reduce(v: f32, l: u32, mx: bool) -> f32 {
  red[l] = v;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st = st >> 1u) {
    if (l < st) { red[l] = select(red[l] + red[l + st], max(red[l], red[l + st]), mx); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let id = wg.x;
  let live = id / H < p.T;
  let t = min(id / H, p.T - 1u);
  let h = id % H;
  let kvh = h / (H / HKV);
  var S = p.T;
  var S0 = 0u;
  if (CAUSAL) { S = p.pos0 + t + 1u; }
  if (CAUSAL && WIN > 0u && S > WIN) { S0 = S - WIN; }
  if (SEG) { S0 = seg_at(2u * t); S = seg_at(2u * t + 1u); }
  let qo = (t * H + h) * HD;
  for (var i = l; i < HD4; i += WG) {
    var v = vec4f(0.0);
    for (var j = 0u; j < 4u; j++) {
      if (4u * i + j < HD) { v[j] = q[qo + 4u * i + j] * SCALE; }
    }
    qs[i] = v;
  }
  workgroupBarrier();
  var g = 0u;                             // this lane's key group and first output dim
  var dl = l;
  if (KG > 1u) { g = l / HD; dl = l % HD; }
  var acc: array<f32, DPL>;
  var M = -3.0e38;
  var L = 0.0;
  for (var k0 = S0; k0 < S; k0 += WG) {
    let s = k0 + l;
    var sc = -3.0e38;
    if (s < S) { sc = kdot(kv_index(kvh, s, 0u)); }
    let mn = max(M, reduce(sc, l, true));
    let c = exp(M - mn);
    var e = 0.0;
    if (s < S) { e = exp(sc - mn); }
    pr[l] = e;
    L = L * c + reduce(e, l, false);      // its barriers also publish pr
    M = mn;
    let n = min(WG, S - k0);
    if (g < KG) {
      for (var i = 0u; i < DPL; i++) {
        let d = dl + i * WG;
        if (d < HD) {
          // 4 keys a trip, their loads issued before the adds (no load waits on the last add)
          var a = vec4f(acc[i] * c, 0.0, 0.0, 0.0);
          var j = g;
          for (; j + 3u * KG < n; j += 4u * KG) {
            let v = vec4f(vv[kv_index(kvh, k0 + j, d)], vv[kv_index(kvh, k0 + j + KG, d)],
                          vv[kv_index(kvh, k0 + j + 2u * KG, d)], vv[kv_index(kvh, k0 + j + 3u * KG, d)]);
            a += vec4f(pr[j], pr[j + KG], pr[j + 2u * KG], pr[j + 3u * KG]) * v;
          }
          for (; j < n; j += KG) { a.x += pr[j] * vv[kv_index(kvh, k0 + j, d)]; }
          acc[i] = (a.x + a.y) + (a.z + a.w);
        }
      }
    }
    workgroupBarrier();                   // pr is rewritten by the next tile
  }
  // sum the key groups' partial rows
  let inv = 1.0 / L;
  let yo = (t * H + h) * HD;
  for (var i = 0u; i < DPL; i++) {
    red[l] = acc[i];
    workgroupBarrier();
    let d = dl + i * WG;
    if (live && g == 0u && d < HD) {
      var a = 0.0;
      for (var gg = 0u; gg < KG; gg++) { a += red[gg * HD + dl]; }
      y[yo + d] = a * inv;
    }
    workgroupBarrier();
  }
}
