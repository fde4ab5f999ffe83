// Runs a Python script inside Pyodide under Node, with the repo's `pyapp` package on sys.path.
//
//   node tests/js/run_pyodide.mjs SCRIPT.py SPEC.json OUT.json
//
// SCRIPT defines `async def main(spec)`; its return value is written to OUT as JSON.
// The host filesystem is mounted at /host (NODEFS), so paths in SPEC are prefixed with /host,
// and the repo's `pyapp/` is copied into /home/pyodide/pyapp (what micropip would install).
// Tokenizers.js and @huggingface/jinja are loaded by the Python side from node_modules
// (file:// URLs in SPEC.modules) through pyapp.tokenizer.load_js_modules.
import { loadPyodide } from "../../node_modules/pyodide/pyodide.mjs";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const [scriptPath, specPath, outPath] = process.argv.slice(2);
if (!scriptPath || !specPath || !outPath) {
  console.error("usage: node tests/js/run_pyodide.mjs SCRIPT.py SPEC.json OUT.json");
  process.exit(2);
}

const t0 = performance.now();
const pyodide = await loadPyodide({ indexURL: path.join(repo, "node_modules/pyodide") + "/" });
const loadMs = performance.now() - t0;

// Copy pyapp/**/*.py into the Pyodide home, as micropip would install them.
function copyTree(src, dst) {
  pyodide.FS.mkdirTree(dst);
  for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
    if (ent.name === "__pycache__") continue;
    const s = path.join(src, ent.name);
    const d = dst + "/" + ent.name;
    if (ent.isDirectory()) copyTree(s, d);
    else if (/\.(py|wgsl|js)$/.test(ent.name)) pyodide.FS.writeFile(d, fs.readFileSync(s));
  }
}
copyTree(path.join(repo, "pyapp"), "/home/pyodide/pyapp");

pyodide.FS.mkdirTree("/host");
pyodide.FS.mount(pyodide.FS.filesystems.NODEFS, { root: "/" }, "/host");

const spec = JSON.parse(fs.readFileSync(specPath, "utf8"));
spec.modules ??= {
  tokenizers: pathToFileURL(path.join(repo, "node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs")).href,
  jinja: pathToFileURL(path.join(repo, "node_modules/@huggingface/jinja/dist/index.js")).href,
};
pyodide.globals.set("_SCRIPT", fs.readFileSync(scriptPath, "utf8"));
pyodide.globals.set("_SCRIPT_PATH", path.resolve(scriptPath));
spec.fs_prefix = "/host";
pyodide.globals.set("_SPEC_JSON", JSON.stringify(spec));
let result;
try {
  result = await pyodide.runPythonAsync(`
import json, sys
sys.path.insert(0, "/home/pyodide")
_ns = {"__name__": "pyodide_script", "__file__": _SCRIPT_PATH}
exec(compile(_SCRIPT, _SCRIPT_PATH, "exec"), _ns)
_out = await _ns["main"](json.loads(_SPEC_JSON))
json.dumps(_out, ensure_ascii=False)
`);
} catch (e) {
  // A Python exception: print its traceback, not the minified wasm glue around it.
  console.error(String(e && e.message ? e.message : e).slice(-8000));
  process.exit(1);
}
const parsed = JSON.parse(result);
parsed._harness = { pyodide_load_ms: loadMs, pyodide_version: pyodide.version, node: process.version };
fs.writeFileSync(outPath, JSON.stringify(parsed));
console.log(`ok: ${outPath} (pyodide ${pyodide.version}, load ${loadMs.toFixed(0)} ms)`);
