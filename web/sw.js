// pyapp service worker: one visit installs it, and from then on the site boots with the network off.
//
// Caches (names are fixed: what could go stale is either content-addressed or network first):
//   pyapp-shell   the page, boot/app/offline JS, wheels/index.json and the vendored Pyodide and
//                 tokenizer files: precached at install (the list is in wheels/index.json), then
//                 network first, the cache when offline;
//   pyapp-wheels  the pyapp wheel, whose name carries a hash of its sources (a new pyapp is a new
//                 URL, so a stale wheel is never served); cache first.  boot.js checks its sha256;
//   pyapp-models  what "Save for offline" stored (web/offline.js): each model file, verified
//                 against its sha256 before it went in, and the model's offline manifest.
//
// Model files are content-addressed (/models/<name>/<sha256[:16]>/<file>).  A cached one answers
// Range requests by slicing; a range past its end means a broken entry: it is dropped and the
// network asked.  A request with cache: 'reload' (the page's refetch after a bad digest) drops
// the cached entry, goes to the network, and puts the file back only when its sha256 matches.
const SHELL = 'pyapp-shell', WHEELS = 'pyapp-wheels', MODELS = 'pyapp-models';
const APP_FILES = ['./', 'index.html', 'boot.js', 'offline.js', 'app.js', 'style.css', 'manifest.webmanifest'];
const scope = () => new URL(self.registration.scope);
const at = (p) => new URL(p, scope()).href;

async function precache() {
  const index = await (await fetch(at('wheels/index.json'), { cache: 'reload' })).json();
  const shell = await caches.open(SHELL);
  const files = [...APP_FILES, 'wheels/index.json', ...(index.precache || [])];
  await Promise.all(files.map(async (p) => {
    const resp = await fetch(at(p), { cache: 'reload' });
    if (!resp.ok) throw new Error(`precache ${p}: HTTP ${resp.status}`);
    await shell.put(at(p), resp);
  }));
  if (index.pyapp) await (await caches.open(WHEELS)).add(new Request(at('wheels/' + index.pyapp), { cache: 'reload' }));
}

self.addEventListener('install', (e) => e.waitUntil(precache().then(() => self.skipWaiting())));
self.addEventListener('activate', (e) => {
  const keep = new Set([SHELL, WHEELS, MODELS]);
  e.waitUntil(caches.keys().then((ks) => Promise.all(ks.filter((k) => !keep.has(k)).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

const MODEL_FILE = /\/models\/[^/]+\/([0-9a-f]{16})\/[^/]+$/;
const MANIFEST = /\/models\/[^/]+\/manifest\.json$/;
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
// Only 'reload' doubts a saved file: the page reads ranges of a shared file with 'no-store' (around
// the HTTP cache, pyapp/edge/stream.py shared_files), which a saved copy still answers.
const doubts = (req) => req.cache === 'reload';

function slice(blob, rangeHeader) {
  const m = /bytes=(\d+)-(\d*)/.exec(rangeHeader || '');
  if (!m) return new Response(blob, { status: 200, headers: { 'Content-Length': String(blob.size), 'Accept-Ranges': 'bytes' } });
  const a = Number(m[1]);
  const b = m[2] ? Number(m[2]) : blob.size - 1;
  if (a > b || b >= blob.size) return null;          // past the end: the entry is short
  return new Response(blob.slice(a, b + 1), { status: 206, headers: {
    'Content-Range': `bytes ${a}-${b}/${blob.size}`, 'Content-Length': String(b - a + 1), 'Accept-Ranges': 'bytes' } });
}

async function modelFile(req, prefix) {
  const cache = await caches.open(MODELS);
  const hit = await cache.match(req.url);
  if (hit && !doubts(req)) {
    const r = slice(await hit.blob(), req.headers.get('Range'));
    if (r) return r;
  }
  if (hit) await cache.delete(req.url);
  const resp = await fetch(req);
  // The page doubted a saved file: put the fresh copy back once it proves itself.
  if (hit && resp.status === 200) {
    const buf = await resp.clone().arrayBuffer();
    if (hex(await crypto.subtle.digest('SHA-256', buf)).startsWith(prefix)) {
      await cache.put(req.url, new Response(buf, { headers: { 'Content-Length': String(buf.byteLength) } })).catch(() => {});
    }
  }
  return resp;
}

async function wheel(req) {
  const cache = await caches.open(WHEELS);
  const hit = doubts(req) ? null : await cache.match(req.url);
  if (hit) return hit;
  const resp = await fetch(req);
  if (resp.status === 200) await cache.put(req.url, resp.clone()).catch(() => {});
  return resp;
}

// Network first; offline, the model's saved manifest (pyapp-models) for a manifest, else the shell.
async function networkFirst(req, isManifest) {
  try {
    const resp = await fetch(req);
    if (!isManifest && resp.status === 200 && !req.headers.get('Range')) await refresh(req, resp.clone());
    return resp;
  } catch (err) {
    const hit = await (await caches.open(isManifest ? MODELS : SHELL)).match(req.url, { ignoreSearch: isManifest });
    if (hit) return hit;
    throw err;
  }
}

// Store a fresh shell file unless the cache already holds this version (same validators).
async function refresh(req, resp) {
  const cache = await caches.open(SHELL);
  const old = await cache.match(req.url);
  const same = (h) => old && resp.headers.get(h) && old.headers.get(h) === resp.headers.get(h);
  if (same('etag') || (same('last-modified') && same('content-length'))) return;
  await cache.put(req.url, resp).catch(() => {});     // a full disk only costs offline use
}

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET') return;
  const u = new URL(req.url);
  if (u.origin !== location.origin || u.pathname.includes('/v1/')) return;   // the API: never cached
  const m = MODEL_FILE.exec(u.pathname);
  if (m) e.respondWith(modelFile(req, m[1]));
  else if (/\/wheels\/[^/]+\.whl$/.test(u.pathname)) e.respondWith(wheel(req));
  else e.respondWith(networkFirst(req, MANIFEST.test(u.pathname)));
});
