// pyapp boot: load Pyodide from this site, install micropip + the pyapp wheel, hand over to Python.
// Everything else (weight streaming, split generation, the API) is Python: pyapp/edge/.
// Every URL here is relative to the page, so the folder can be deployed statically and cached
// offline by sw.js.  No CDN.

const BASE = new URL('./', document.baseURI);
const url = (p) => new URL(p, BASE).href;
const params = new URLSearchParams(location.search);

function say(message, extra) {
  dispatchEvent(new CustomEvent('pyapp:status', { detail: { message, phase: 'boot', ...extra } }));
}

// The wheel index the server writes: accept a list of file names / objects, or {name: file}.
function pickWheel(index) {
  if (index && typeof index.pyapp === 'string') return new URL(index.pyapp, url('wheels/')).href;
  let items = [];
  if (Array.isArray(index)) items = index;
  else if (index && Array.isArray(index.wheels)) items = index.wheels;
  else if (index && typeof index === 'object') items = Object.entries(index).map(([k, v]) => (typeof v === 'string' ? { name: k, file: v } : { name: k, ...v }));
  const norm = items.map((it) => (typeof it === 'string' ? { file: it } : it));
  const hit = norm.find((it) => /^pyapp-/.test(it.file || it.filename || it.url || '') || it.name === 'pyapp');
  if (!hit) throw new Error('wheels/index.json lists no pyapp wheel');
  const f = hit.url || hit.file || hit.filename;
  return new URL(f, url('wheels/')).href;
}

// micropip from the Pyodide distribution (vendor/pyodide, checked against pyodide-lock.json),
// else the micropip wheel the site lists, else (a pure-Python wheel is a zip) unpack it directly.
async function installWheel(pyodide, index, wheel) {
  const quiet = { messageCallback: () => {}, errorCallback: (m) => console.warn('[pyapp] ' + m) };
  const has = () => { try { pyodide.pyimport('micropip'); return true; } catch (e) { return false; } };
  await pyodide.loadPackage('micropip', quiet).catch(() => {});
  if (!has() && index.micropip) await pyodide.loadPackage(new URL(index.micropip, url('wheels/')).href, quiet).catch(() => {});
  if (has()) {
    try {
      pyodide.globals.set('_pyapp_wheel', wheel);
      await pyodide.runPythonAsync('import micropip\nawait micropip.install(_pyapp_wheel, deps=False)\ndel _pyapp_wheel');
      return 'micropip';
    } catch (e) { console.warn('[pyapp] micropip.install failed, unpacking the wheel directly:', e); }
  }
  const buf = await (await fetch(wheel)).arrayBuffer();
  pyodide.unpackArchive(buf, 'wheel');
  return 'unpackArchive';
}

async function boot() {
  const t0 = performance.now();
  say('loading Pyodide');
  const { loadPyodide } = await import(url('vendor/pyodide/pyodide.mjs'));
  const pyodide = await loadPyodide({ indexURL: url('vendor/pyodide/'), stdout: (s) => console.log(s), stderr: (s) => console.warn(s) });
  globalThis.pyodide = pyodide;
  const tPy = performance.now();

  say('installing the pyapp wheel');
  const index = await (await fetch(url('wheels/index.json'), { cache: 'no-cache' })).json();
  const wheel = pickWheel(index);
  const via = await installWheel(pyodide, index, wheel);
  const api = pyodide.pyimport('pyapp.edge.api');
  api.install(location.origin + BASE.pathname.replace(/\/$/, ''));
  const tReady = performance.now();

  Object.assign(globalThis.pyapp, {
    pyodide,
    api,
    generate: (prompt, opts = {}) => api.generate_js(prompt, opts),
    embed: (texts, opts = {}) => api.embed_js(texts, opts),
    tokenize: (text, opts = {}) => api.tokenize_js(text, opts),
    runPython: (code) => pyodide.runPythonAsync(code),
    stop: () => api.stop(),
    stats: () => api.stats_js(),
    adapter: () => api.adapter_js(),
    defaultSplit: (model) => api.default_split_js(model),
    models: () => api.models_js(),
    boot: { pyodideMs: tPy - t0, wheelMs: tReady - tPy, totalMs: tReady - t0, via, wheel },
  });
  say(`ready in ${((tReady - t0) / 1000).toFixed(1)} s`, { phase: 'ready' });
  return globalThis.pyapp;
}

let resolveReady, rejectReady;
globalThis.pyapp = {
  ready: new Promise((res, rej) => { resolveReady = res; rejectReady = rej; }),
};
boot().then(resolveReady, (e) => {
  console.error('[pyapp] boot failed', e);
  say('boot failed: ' + (e && e.message || e), { phase: 'error' });
  rejectReady(e);
});

if ('serviceWorker' in navigator && !params.has('nosw') && isSecureContext) {
  navigator.serviceWorker.register(url('sw.js'), { scope: BASE.pathname }).catch((e) => console.warn('[pyapp] service worker:', e));
}
