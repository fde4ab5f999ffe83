// Offline use and the static site, for boot.js and the page.
//   saveOffline(model, {format})  every file of the model (in `format`, default the format generate
//                                 runs by default) into the 'pyapp-models' cache, one file
//                                 per weight chunk (per 16 MiB piece of a bigger one), each checked against its sha256 before it goes
//                                 in; resumes (files already cached are skipped); pyapp:offline
//                                 events carry the progress
//   offlineStatus()               {models: {name: {bytes, total, complete, files, cached, n_layers, kind}},
//                                  usage, quota, persisted}
//   removeOffline(model)
//   edgeGuard(site, api)          what the console API checks before Python runs: a static site
//                                 has no server (split 0 only, WebGPU required); offline, split > 0
//                                 needs the server and the model must have been saved.
// sw.js serves the saved files (and, offline, the saved manifest); see docs/static.md.
const MODELS = 'pyapp-models';
const BASE = new URL('./', document.baseURI);
const url = (p) => new URL(p.replace(/^\//, ''), BASE).href;      // manifest URLs are site-rooted
const MB = (b) => (b / 1e6).toFixed(1) + ' MB';
const manifestKey = (model) => url(`models/${model}/manifest.json`);

export async function sha256hex(buf) {
  return Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', buf)), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Drop every cached copy of a URL (a file that failed its digest).
export async function dropCached(href) {
  for (const k of await caches.keys()) await (await caches.open(k)).delete(href);
}

function emit(detail) { dispatchEvent(new CustomEvent('pyapp:offline', { detail })); }

// One sentence with the numbers.  `stored`: bytes that went in before the browser refused more
// (the quota the browser enforces can be below what storage.estimate() reports).
function quotaError(model, need, est, stored) {
  const refused = stored === undefined ? '' : `the browser refused more after ${MB(stored)}; `;
  const e = new Error(`Not enough storage to save ${model} for offline use: it needs ${MB(need)} more; ${refused}` +
    `storage.estimate() reports ${MB(est.usage || 0)} used of ${MB(est.quota || 0)}.`);
  Object.assign(e, { name: 'QuotaExceededError', needed: need, stored, usage: est.usage, quota: est.quota });
  return e;
}
const estimate = async () => (navigator.storage && navigator.storage.estimate ? navigator.storage.estimate() : { usage: 0, quota: 0 });

// The model's manifest in the one-file-per-chunk layout: as served by a static site, or rewritten
// from the server's (whole-file, Range) manifest by pyapp/edge/offline.py.
async function chunkedManifest(model, format) {
  const src = url(`models/${model}/manifest.json`) + (format ? `?dtype=${format}` : '');
  let resp;
  try { resp = await fetch(src, { cache: 'no-store' }); } catch (e) {
    throw new Error(`cannot save ${model} for offline use: the site is unreachable (${e.message})`);
  }
  if (!resp.ok) throw new Error(`cannot save ${model}${format ? ' (' + format + ')' : ''}: the site has no such model (HTTP ${resp.status})`);
  const text = await resp.text();
  if (JSON.parse(text).layout === 'chunk-files') return JSON.parse(text);
  await globalThis.pyapp.ready;
  return JSON.parse(globalThis.pyapp.pyodide.pyimport('pyapp.edge.offline').chunked_manifest_json(text));
}

// The body of resp, size bytes, reporting progress as it arrives.
async function readBody(resp, size, onBytes) {
  const out = new Uint8Array(size);
  const reader = resp.body.getReader();
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length > size) { reader.cancel().catch(() => {}); throw new Error(`${resp.url}: longer than ${size} bytes`); }
    out.set(value, got); got += value.length; onBytes(value.length);
  }
  if (got !== size) throw new Error(`${resp.url}: ${got} of ${size} bytes`);
  return out;
}

// One file's bytes: a plain GET of its own URL, or (under `pyapp serve`) its ranges of the
// whole weights file, concatenated.
async function download(file, source, reload, onBytes) {
  const cache = reload ? 'reload' : 'default';
  if (!source) {
    const r = await fetch(url(file.url), { cache });
    if (!r.ok) throw new Error(`GET ${file.url}: HTTP ${r.status}`);
    return readBody(r, file.size, onBytes);
  }
  const out = new Uint8Array(file.size);
  let at = 0;
  for (const [off, len] of source.ranges) {
    const r = await fetch(url(source.url), { cache, headers: { Range: `bytes=${off}-${off + len - 1}` } });
    if (r.status !== 206) throw new Error(`GET ${source.url} bytes ${off}-${off + len - 1}: HTTP ${r.status}`);
    out.set(await readBody(r, len, onBytes), at); at += len;
  }
  return out;
}

const saving = new Map();
export function saveOffline(model, opts = {}) {
  if (!model) return Promise.reject(new Error('saveOffline(model): name the model, e.g. "smollm2-135m"'));
  if (!saving.has(model)) saving.set(model, save(model, opts.format).finally(() => saving.delete(model)));
  return saving.get(model);
}

// No format named: the one generate runs by default (the edge's: the smallest the server has), so
// the saved files are the ones the page uses (Gemma 3: its 247 MB of Q4_K_M blocks, not 1.07 GB of
// f32).  A static site has one format per model: its manifest's.
async function defaultFormat(model) {
  const p = globalThis.pyapp;
  await p.ready;
  if (!p.site || p.site.static) return undefined;
  try { return (await p.formats(model)).default; } catch (e) { return undefined; }   // e.g. an encoder
}

async function save(model, format) {
  const t0 = performance.now();
  const m = await chunkedManifest(model, format || await defaultFormat(model));
  const source = Object.assign({}, ...m.chunks.map((c) => c.sources || {}));   // file -> {url, ranges} (under a server)
  const cache = await caches.open(MODELS);
  const have = new Set((await cache.keys()).map((r) => r.url));
  const files = Object.entries(m.files).map(([name, f]) => ({ name, ...f }));
  const todo = files.filter((f) => !have.has(url(f.url)));
  const total = files.reduce((a, f) => a + f.size, 0);
  const need = todo.reduce((a, f) => a + f.size, 0);
  let done = total - need;
  const est = await estimate();
  if (est.quota && est.quota - est.usage < need) throw quotaError(model, need, est);
  const persisted = navigator.storage && navigator.storage.persist ? await navigator.storage.persist().catch(() => false) : false;
  const { source: _s, ...bare } = m;
  const saved = { ...bare, chunks: m.chunks.map(({ sources: _x, ...c }) => c) };
  await put(cache, manifestKey(model), new Response(JSON.stringify(saved), { headers: { 'Content-Type': 'application/json' } }), model, need, 0);
  emit({ model, phase: 'save', done, total, file: null });
  let stored = 0;
  for (const f of todo) {
    let bytes = null;
    for (let attempt = 0; attempt < 2 && !bytes; attempt++) {
      const b = await download(f, source[f.name], attempt > 0, (n) => { done += n; emit({ model, phase: 'save', done, total, file: f.name }); });
      if ((await sha256hex(b)) === f.sha256) bytes = b;
      else { done -= f.size; console.warn(`[pyapp] ${f.url} failed its sha256 check; refetching`); }
    }
    if (!bytes) throw new Error(`cannot save ${model}: ${f.url} failed its sha256 check twice`);
    await put(cache, url(f.url), new Response(bytes, { headers: { 'Content-Length': String(f.size), 'Content-Type': 'application/octet-stream' } }), model, need, stored);
    stored += f.size;
  }
  const st = await offlineStatus();
  const out = { model, ...st.models[model], usage: st.usage, quota: st.quota, persisted: st.persisted || persisted,
                seconds: (performance.now() - t0) / 1e3, downloaded: need };
  emit({ ...out, phase: 'saved', done: total, total });
  return out;
}

async function put(cache, key, resp, model, need, stored) {
  try { await cache.put(key, resp); } catch (e) {
    if (e && (e.name === 'QuotaExceededError' || /quota/i.test(e.message))) throw quotaError(model, need, await estimate(), stored);
    throw e;
  }
}

export async function offlineStatus() {
  const out = { models: {}, usage: 0, quota: 0, persisted: false };
  const cache = await caches.open(MODELS);
  const keys = (await cache.keys()).map((r) => r.url);
  const have = new Set(keys);
  for (const k of keys) {
    const mm = /\/models\/([^/]+)\/manifest\.json$/.exec(new URL(k).pathname);
    if (!mm) continue;
    const m = await (await cache.match(k)).json();
    const files = Object.values(m.files);
    const cached = files.filter((f) => have.has(url(f.url)));
    out.models[decodeURIComponent(mm[1])] = {
      bytes: cached.reduce((a, f) => a + f.size, 0), total: files.reduce((a, f) => a + f.size, 0),
      complete: cached.length === files.length, files: files.length, cached: cached.length,
      dtype: m.dtype, n_layers: m.n_layers, kind: m.kind };
  }
  const est = await estimate();
  out.usage = est.usage || 0; out.quota = est.quota || 0;
  out.persisted = navigator.storage && navigator.storage.persisted ? await navigator.storage.persisted() : false;
  return out;
}

export async function removeOffline(model) {
  const cache = await caches.open(MODELS);
  for (const r of await cache.keys()) if (new URL(r.url).pathname.includes(`/models/${model}/`)) await cache.delete(r);
  return offlineStatus();
}

// ---------------------------------------------------------------- the console API's checks

async function online() {
  if (!navigator.onLine) return false;
  try { return (await fetch(url('wheels/index.json'), { method: 'HEAD', cache: 'no-store' })).ok; } catch (e) { return false; }
}

export function edgeGuard(site, api) {
  const adapter = async () => {
    const ad = await api.adapter_js();
    if (site.static && !ad.available) ad.reason = `this static site needs WebGPU and this browser has none (${ad.reason})`;
    return ad;
  };
  async function options(opts, kind) {
    const o = { ...opts };
    const model = o.model || 'smollm2-135m';
    const asked = o.split === undefined || o.split === null ? null : Number(o.split);
    if (site.static) {
      const ids = (site.models || []).map((m) => m.id);
      if (!ids.includes(model)) throw new Error(`${model} is not part of this static site (it has: ${ids.join(', ') || 'no models'}); add it with pyapp build-site --model ${model}`);
      if (asked > 0) throw new Error(`split ${asked} needs a pyapp server: this static site runs every layer on this GPU (split 0)`);
      const ad = await adapter();
      if (!ad.available) throw new Error(`This site needs WebGPU: ${ad.reason}. It is a static site, so no server can run the model instead.`);
      o.split = 0;
    }
    if (!(await online())) {
      if (asked > 0) throw new Error(`offline: split ${asked} needs the pyapp server; use split 0 to run every layer on this GPU`);
      const st = (await offlineStatus()).models[model];
      if (!st || !st.complete) {
        throw new Error(`${model} is not saved for offline use on this device` +
          (st ? ` (${st.cached} of ${st.files} files)` : '') + `: go online and press "Save for offline" (await pyapp.saveOffline('${model}'))`);
      }
      o.split = 0;
    }
    return o;
  }
  async function defaultSplit(model) {
    if (site.static) return { split: 0, reason: 'static site: no server, every layer runs on this GPU' };
    if (!(await online())) return { split: 0, reason: 'offline: the server is out of reach, so every layer runs on this GPU (split 0)' };
    return api.default_split_js(model);
  }
  async function models() {
    if (site.static) return { object: 'list', data: site.models || [] };
    if (!(await online())) {
      const st = await offlineStatus();
      return { object: 'list', data: Object.entries(st.models).filter(([, s]) => s.complete)
        .map(([id, s]) => ({ id, object: 'model', pyapp: { n_layers: s.n_layers, kind: s.kind } })) };
    }
    return api.models_js();
  }
  return { options, adapter, defaultSplit, models };
}

// ---------------------------------------------------------------- the page's "Offline" card

const $ = (id) => document.getElementById(id);

async function showStatus() {
  const st = await offlineStatus();
  const model = ($('model') || {}).value;
  const s = st.models[model];
  $('offline-size').textContent = s ? `${model}: ${MB(s.bytes)} of ${MB(s.total)}${s.complete ? ' saved' : ' (incomplete)'}` : `${model || ''} not saved`;
  $('offline-info').textContent = `storage ${MB(st.usage)} of ${MB(st.quota)} · ${st.persisted ? 'persistent' : 'may be evicted'}` +
    (navigator.onLine ? '' : ' · offline');
  $('offline-remove').disabled = !s;
  return st;
}

function wire() {
  if (!$('offline-save')) return;
  addEventListener('pyapp:offline', (e) => {
    const d = e.detail;
    $('offline-fill').style.width = (d.total ? (100 * d.done) / d.total : 0).toFixed(1) + '%';
    $('offline-num').textContent = `${MB(d.done)} / ${MB(d.total)}`;
    $('offline-file').textContent = d.phase === 'saved' ? `${d.model} saved` : (d.file || d.model);
  });
  $('offline-save').addEventListener('click', async () => {
    $('offline-save').disabled = true;
    try { await saveOffline($('model').value, { format: ($('format') && $('format').value) || undefined }); } catch (e) { $('offline-info').textContent = 'error: ' + e.message; console.error(e); return; } finally { $('offline-save').disabled = false; }
    showStatus();
  });
  $('offline-remove').addEventListener('click', async () => { await removeOffline($('model').value); $('offline-fill').style.width = '0%'; showStatus(); });
  $('model').addEventListener('change', () => showStatus());
  addEventListener('online', () => showStatus());
  addEventListener('offline', () => showStatus());
  showStatus().catch(() => {});
  globalThis.pyapp.ready.then(async (p) => {
    const offline = !(await online());
    if (!p.site.static && !offline) return;
    // no server to reach: every layer runs here; the split controls say so
    for (const id of ['split', 'embed-split']) { const el = $(id); if (el) { el.value = 0; el.disabled = true; } }
    const why = p.site.static ? 'static site: no server, every layer runs on this GPU (split 0)'
      : 'offline: split > 0 needs the server; every layer runs on this GPU (split 0)';
    const n = $('notice');
    const ad = await p.adapter();
    const say = () => { const t = ad.available ? why : `This site needs WebGPU: ${ad.reason}.`; if (n.textContent !== t) { n.textContent = t; n.hidden = false; } };
    say();
    new MutationObserver(say).observe(n, { childList: true, characterData: true, subtree: true });
  }).catch(() => {});
}
// after boot.js has defined globalThis.pyapp (this module is evaluated before boot.js's body)
setTimeout(wire, 0);
