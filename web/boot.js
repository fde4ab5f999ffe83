// pyapp boot: load Pyodide from this site, install the pyapp wheel, hand over to Python.
// Everything else (weight streaming, split generation, the API) is Python: pyapp/edge/.
// Every URL here is relative to the page, so the folder can be deployed statically
// (`pyapp build-site`) and cached offline by sw.js.  No CDN.
import * as offline from './offline.js';

const BASE = new URL('./', document.baseURI);
const url = (p) => new URL(p, BASE).href;
const params = new URLSearchParams(location.search);

function say(message, extra) {
  dispatchEvent(new CustomEvent('pyapp:status', { detail: { message, phase: 'boot', ...extra } }));
}

// wheels/index.json names the pyapp wheel (relative to wheels/) and lists every wheel's sha256.
function pickWheel(index) {
  if (!index || typeof index.pyapp !== 'string') throw new Error('wheels/index.json lists no pyapp wheel: run `python3 -m server.assets`');
  const entry = (index.wheels || {})[index.pyapp] || {};
  return { href: new URL(index.pyapp, url('wheels/')).href, sha256: entry.sha256 || null };
}

// The wheel's bytes, checked against index.json.  A mismatch (a broken cache entry, a proxy)
// drops every cached copy and refetches once from the network.
async function fetchWheel(wheel) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const resp = await fetch(wheel.href, { cache: attempt ? 'reload' : 'default' });
    if (!resp.ok) throw new Error(`GET ${wheel.href}: HTTP ${resp.status}`);
    const buf = await resp.arrayBuffer();
    if (!wheel.sha256 || (await offline.sha256hex(buf)) === wheel.sha256) return buf;
    console.warn('[pyapp] the pyapp wheel failed its sha256 check; refetching');
    await offline.dropCached(wheel.href);
  }
  throw new Error(`the pyapp wheel ${wheel.href} does not match the sha256 in wheels/index.json`);
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
  pyodide.unpackArchive(await fetchWheel(wheel), 'wheel');
  const api = pyodide.pyimport('pyapp.edge.api');
  api.install(location.origin + BASE.pathname.replace(/\/$/, ''));
  const tReady = performance.now();

  const site = index.site || { static: false };   // build-site writes {static: true, models: [...]}
  const edge = offline.edgeGuard(site, api);
  Object.assign(globalThis.pyapp, {
    pyodide,
    api,
    site,
    generate: async (prompt, opts = {}) => api.generate_js(prompt, await edge.options(opts, 'generate')),
    embed: async (texts, opts = {}) => api.embed_js(texts, await edge.options({ model: 'minilm-l6', ...opts }, 'embed')),
    tokenize: (text, opts = {}) => api.tokenize_js(text, opts),
    runPython: (code) => pyodide.runPythonAsync(code),
    stop: () => api.stop(),
    stats: () => api.stats_js(),
    adapter: () => edge.adapter(),
    defaultSplit: (model) => edge.defaultSplit(model),
    models: () => edge.models(),
    formats: (model) => api.formats_js(model),
    saveOffline: (model, opts = {}) => offline.saveOffline(model, opts),
    offlineStatus: () => offline.offlineStatus(),
    removeOffline: (model) => offline.removeOffline(model),
    boot: { pyodideMs: tPy - t0, wheelMs: tReady - tPy, totalMs: tReady - t0, via: 'unpackArchive', wheel: wheel.href },
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
