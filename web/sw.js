// pyapp service worker: the site works offline once visited.
//  - app shell, vendored Pyodide/Tokenizers.js, wheels: cache first (they are versioned files),
//    index.html / wheels/index.json / manifests: network first, cache as fallback;
//  - model files are content-addressed (/models/<name>/<sha>/<file>): a Range request is answered
//    from the cache when the whole file is there (a 206 sliced from the cached body), else passed
//    to the network untouched (the Cache API cannot store partial responses).  postMessage
//    {op: 'cache-model', urls: [...]} stores whole files for offline use.
const VERSION = 'pyapp-v1';
const SHELL = ['./', 'index.html', 'boot.js', 'app.js', 'style.css', 'manifest.webmanifest'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(VERSION).then((c) => c.addAll(SHELL)).catch(() => {}).then(() => self.skipWaiting()));
});
self.addEventListener('activate', (e) => {
  e.waitUntil(caches.keys().then((ks) => Promise.all(ks.filter((k) => k !== VERSION && k !== 'pyapp-models').map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

const isImmutable = (p) => /\/vendor\/|\/wheels\/.+\.whl$/.test(p) || /\/models\/[^/]+\/[0-9a-f]{16}\//.test(p);
const isModelFile = (p) => /\/models\/[^/]+\/[0-9a-f]{16}\//.test(p);

async function rangeFromCache(req) {
  const cache = await caches.open('pyapp-models');
  const hit = await cache.match(req.url);
  if (!hit) return null;
  const m = /bytes=(\d+)-(\d*)/.exec(req.headers.get('Range') || '');
  const blob = await hit.blob();
  if (!m) return new Response(blob, { status: 200, headers: { 'Content-Length': String(blob.size), 'Accept-Ranges': 'bytes' } });
  const a = Number(m[1]);
  const b = m[2] ? Math.min(Number(m[2]), blob.size - 1) : blob.size - 1;
  if (a >= blob.size) return new Response(null, { status: 416, headers: { 'Content-Range': `bytes */${blob.size}` } });
  return new Response(blob.slice(a, b + 1), { status: 206, headers: {
    'Content-Range': `bytes ${a}-${b}/${blob.size}`, 'Content-Length': String(b - a + 1), 'Accept-Ranges': 'bytes' } });
}

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET') return;
  const u = new URL(req.url);
  if (u.origin !== location.origin) return;
  if (u.pathname.includes('/v1/')) return;                   // the API: never cached
  if (isModelFile(u.pathname)) {
    e.respondWith(rangeFromCache(req).then((r) => r || fetch(req)));
    return;
  }
  if (isImmutable(u.pathname)) {
    e.respondWith(caches.open(VERSION).then(async (c) => {
      const hit = await c.match(req);
      if (hit) return hit;
      const resp = await fetch(req);
      if (resp.status === 200) c.put(req, resp.clone());
      return resp;
    }));
    return;
  }
  // network first for the rest (pages, index.json, manifests), the cache when offline
  e.respondWith(fetch(req).then((resp) => {
    if (resp.status === 200 && !req.headers.get('Range')) { const copy = resp.clone(); caches.open(VERSION).then((c) => c.put(req, copy)); }
    return resp;
  }).catch(() => caches.match(req).then((r) => r || Response.error())));
});

self.addEventListener('message', (e) => {
  const d = e.data || {};
  if (d.op === 'cache-model' && Array.isArray(d.urls)) {
    e.waitUntil(caches.open('pyapp-models').then(async (c) => {
      for (const u of d.urls) { if (!(await c.match(u))) await c.add(u); }
      if (e.source) e.source.postMessage({ op: 'cached', urls: d.urls });
    }));
  }
});
