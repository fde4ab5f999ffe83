// Decode benchmark of pyapp's browser binding (pyapp.gpu.browser: Pyodide's FFI over
// navigator.gpu, the code that runs in the page) inside Deno, whose navigator.gpu is wgpu.
//
//   deno run --unstable-webgpu -A benchmarks/deno/run_decode.mjs SPEC.json OUT.json
//
// SPEC: {pyodide: dir with pyodide.mjs, pyapp: dir holding the `pyapp` package,
//        config: HF config dict, names: [tensor names], dtype: "f32"|"f16",
//        prompt_tokens, new_tokens, variants: {..} | null (null: autotune_async in Deno)}
// Weights are random, generated here in JS (never in the wasm heap) by the same pool
// generator as benchmarks/bench_compare.py (`pool_weights`), and handed to
// GpuBackend.write_weight as Uint8Arrays, as a fetch() response would be in the page.
import fs from "node:fs";
import path from "node:path";

const [specPath, outPath] = Deno.args;
if (!specPath || !outPath) {
  console.error("usage: deno run --unstable-webgpu -A run_decode.mjs SPEC.json OUT.json");
  Deno.exit(2);
}
const spec = JSON.parse(fs.readFileSync(specPath, "utf8"));
const t0 = performance.now();
const { loadPyodide } = await import(path.resolve(spec.pyodide, "pyodide.mjs"));
const pyodide = await loadPyodide({ indexURL: path.resolve(spec.pyodide) + "/" });
const bootS = (performance.now() - t0) / 1000;

// Copy pyapp/**/*.{py,wgsl,js} into the Pyodide home, as micropip would install the wheel.
function copyTree(src, dst) {
  pyodide.FS.mkdirTree(dst);
  for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
    if (ent.name === "__pycache__") continue;
    const s = path.join(src, ent.name), d = dst + "/" + ent.name;
    if (ent.isDirectory()) copyTree(s, d);
    else if (/\.(py|wgsl|js)$/.test(ent.name)) pyodide.FS.writeFile(d, fs.readFileSync(s));
  }
}
copyTree(path.join(spec.pyapp, "pyapp"), "/home/pyodide/pyapp");

// ---- the pool generator (must match bench_compare.pool / pool_weights bit for bit)
const POOL = 1048573;   // prime: rows of any width do not line up with the period
function lowbias32(x) {
  x = (x ^ (x >>> 16)) >>> 0; x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0; x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}
const pool = new Float32Array(POOL);
for (let j = 0; j < POOL; j++) pool[j] = ((lowbias32(j) / 4294967296) * 2 - 1) * Math.sqrt(3);
function nameOffset(name) {          // FNV-1a of the name, mod POOL
  let h = 0x811c9dc5;
  for (const c of new TextEncoder().encode(name)) h = Math.imul(h ^ c, 0x01000193) >>> 0;
  return h % POOL;
}
// One tensor's bytes: out[i] = cast(scale * pool[(i + off) % POOL]) (1 + that for 1-D tensors).
const scaled = new Map();           // the pool scaled and cast, per (rank 1?, scale, dtype)
globalThis.makeWeight = (name, shape, dtype) => {
  shape = Array.from(shape);
  const numel = shape.reduce((a, b) => a * b, 1);
  const f16 = dtype === "f16", vec = shape.length === 1;
  const scale = Math.fround(vec ? 0.05 : 1 / Math.sqrt(shape[shape.length - 1]));
  const key = `${vec}|${scale}|${dtype}`;
  let per = scaled.get(key);
  if (!per) {
    per = new (f16 ? Float16Array : Float32Array)(POOL);
    for (let j = 0; j < POOL; j++)
      per[j] = vec ? Math.fround(1 + Math.fround(scale * pool[j])) : Math.fround(scale * pool[j]);
    scaled.set(key, per);
  }
  const out = new (f16 ? Float16Array : Float32Array)(numel);
  for (let pos = 0, start = nameOffset(name); pos < numel; start = 0) {
    const n = Math.min(POOL - start, numel - pos);
    out.set(per.subarray(start, start + n), pos);
    pos += n;
  }
  return new Uint8Array(out.buffer);
};

globalThis.SPEC = JSON.stringify(spec);
const code = fs.readFileSync(new URL("./decode.py", import.meta.url), "utf8");
let result;
try {
  result = JSON.parse(await pyodide.runPythonAsync(code));
} catch (e) {
  console.error(String(e));
  Deno.exit(1);
}
result.pyodide_boot_seconds = bootS;
result.deno = Deno.version;
fs.writeFileSync(outPath, JSON.stringify(result, null, 1));
console.log(`deno browser binding: ${result.decode_tokens_per_s.toFixed(1)} tok/s, ` +
            `${result.dispatches_per_token} dispatches/token, ${result.ffi_crossings_per_token} crossings/token`);
