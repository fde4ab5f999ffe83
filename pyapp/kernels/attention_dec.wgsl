// attention_split.wgsl for one decode token (T = 1), short per-lane chains: same bindings, grid
// (H, NS), cache append and outputs, 128 lanes. Keys and values are read as vec4 and every
// load of a lane is issued before its arithmetic: the loops are written out with named
// registers by wgsl.attn_dec_code (a lane walking a whole key row, then 32 values, one load
// waiting on the last, was latency-bound).
// Scores: LPK = 128 / SL lanes per key, lane part r dots vec4s r, r + LPK, ... of its key with
// q; the partial dots summed in workgroup memory. Values: KG groups of HV = HD / 4 lanes, lane
// (g, d) accumulates p_j * v_j[d] over keys j = g, g + KG, ...; the groups summed at the end.
// Keys before pos0 come from the cache; this step's key (position pos0) is read from k and
// rotated here, its value from v, so no workgroup waits for another's cache write. Split 0 of
// the first query head of each kv head appends the rotated k and v to the cache.
// NS == 1: the normalized output goes to `o` ([H*HD]); else (acc[HD], m, l) per split goes to
// `o` ([H, NS, HD+2]); splits past pos0 hold (0, -3e38, 0), as attention_split leaves them.
@group(0) @binding(1) var<storage, read> cs: array<vec2f>;
@group(0) @binding(2) var<storage, read> q: array<vec4f>;
@group(0) @binding(3) var<storage, read> k: array<vec4f>;
@group(0) @binding(4) var<storage, read> v: array<vec4f>;
@group(0) @binding(5) var<storage, read_write> kc: array<vec4f>;
@group(0) @binding(6) var<storage, read_write> vc: array<vec4f>;
@group(0) @binding(7) var<storage, read_write> o: array<f32>;
const H: u32 = ${H}u;
const HKV: u32 = ${HKV}u;
const HD: u32 = ${HD}u;
const HALF: u32 = ${HALF}u;
const CAP: u32 = ${CAP}u;
const SCALE: f32 = ${SCALE};
const NS: u32 = ${NS}u;
const SL: u32 = ${SL}u;
const HV: u32 = ${HV}u;       // vec4 per row
const HQ: u32 = ${HQ}u;       // vec4 per half row
const LPK: u32 = ${LPK}u;     // lanes per key (scores)
const KG: u32 = ${KG}u;       // key groups (values)
const G: u32 = H / HKV;
var<workgroup> qs: array<vec4f, ${HV}>;
var<workgroup> sc: array<f32, 128>;         // partial dots
var<workgroup> pw: array<f32, ${SL}>;       // scores
var<workgroup> wa: array<vec4f, 128>;       // per key group: sum p_j v_j
var<workgroup> wl: array<f32, ${KG}>;       // per key group: sum p_j

// vec4 c of a row (halves lo, hi at vec4 c % HQ) rotated at cs entries i.. (rotate-half)
fn rope4(lo: vec4f, hi: vec4f, i: u32, upper: bool) -> vec4f {
  let a = cs[i];
  let b = cs[i + 1u];
  let c = cs[i + 2u];
  let d = cs[i + 3u];
  let co = vec4f(a.x, b.x, c.x, d.x);
  let si = vec4f(a.y, b.y, c.y, d.y);
  if (upper) { return hi * co + lo * si; }
  return lo * co - hi * si;
}

// vec4 c of this step's key of kv head kvh, rotated
fn cur_key(kvh: u32, c: u32) -> vec4f {
  let h = c % HQ;
  return rope4(k[kvh * HV + h], k[kvh * HV + h + HQ], p.pos0 * HALF + 4u * h, c >= HQ);
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) l: u32) {
  let id = wg.x;                      // = head h (T = 1)
  let sp = wg.y;
  let h = id % H;
  let kvh = h / G;
  let pos = p.pos0;
  let k0 = sp * SL;
  let k1 = min(pos + 1u, k0 + SL);
  if (k0 > pos) {                     // an empty split (uniform per workgroup)
    for (var i = l; i < HD + 2u; i += 128u) { o[(id * NS + sp) * (HD + 2u) + i] = select(0.0, -3.0e38, i == HD); }
    return;
  }
  for (var c = l; c < HV; c += 128u) {
    let hc = c % HQ;
    qs[c] = rope4(q[h * HV + hc], q[h * HV + hc + HQ], pos * HALF + 4u * hc, c >= HQ) * SCALE;
  }
  if (sp == 0u && h % G == 0u) {
    for (var c = l; c < HV; c += 128u) {
      kc[(kvh * CAP + pos) * HV + c] = cur_key(kvh, c);
      vc[(kvh * CAP + pos) * HV + c] = v[kvh * HV + c];
    }
  }
  workgroupBarrier();
  // scores: lane (key j, part r)
  let j = l / LPK;
  let r = l % LPK;
  let s = k0 + j;
  var e = 0.0;
  if (s < pos) {
    let b = (kvh * CAP + s) * HV;
${SCORE_CACHED}
  } else if (s == pos) {
${SCORE_CUR}
  }
  sc[l] = e;
  workgroupBarrier();
  if (l < SL) {
${SCORE_SUM}
  }
  workgroupBarrier();
${MAX}
  // values: lane (key group g, vec4 d)
  let g = l / HV;
  let d = l % HV;
  var acc = vec4f();
  var ls = 0.0;
  if (g < KG) {
    if (k0 < pos) {                   // cached keys [k0, pos) in this split (uniform)
      let vb = kvh * CAP;
${VALUES}
    }
    if (g == 0u && k1 == pos + 1u) {  // this step's key, its value from v
      let wc = exp(pw[pos - k0] - m);
      acc += wc * v[kvh * HV + d];
      ls += wc;
    }
    wa[l] = acc;
    if (d == 0u) { wl[g] = ls; }
  }
  workgroupBarrier();
  if (l < HV) {
${REDUCE}
    if (NS == 1u) {
      let y = a / L;
      let ob = id * HD + 4u * l;
      o[ob] = y.x;
      o[ob + 1u] = y.y;
      o[ob + 2u] = y.z;
      o[ob + 3u] = y.w;
    } else {
      let ob = (id * NS + sp) * (HD + 2u);
      o[ob + 4u * l] = a.x;
      o[ob + 4u * l + 1u] = a.y;
      o[ob + 4u * l + 2u] = a.z;
      o[ob + 4u * l + 3u] = a.w;
      if (l == 0u) {
        o[ob + HD] = m;
        o[ob + HD + 1u] = L;
      }
    }
  }
}
