// The byte mover of pyapp/edge/stream.py (evaluated once per page): Range requests read
// straight into one Uint8Array per manifest chunk, resumed from the first missing byte when a
// body breaks off, ends short or stalls, then checked with SHA-256.  Python plans; this moves.
//
// Every wait is bounded: no response headers, or no body bytes, for `stallMs` aborts the request
// (then it is retried from the missing byte, at most `maxTries` times per request, with backoff);
// a chunk whose digest is wrong is refetched whole at most `maxAttempts` times.
(() => {
  const now = () => performance.now();
  const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const jsHeap = () => (globalThis.performance && performance.memory ? performance.memory.usedJSHeapSize : 0);
  // httpCache false: the ranges go around the browser's HTTP cache ('no-store'), for a file this
  // load reads several ranges of at once (stream.py shared_files)
  const DEFAULTS = { stallMs: 20000, maxTries: 4, maxAttempts: 3, verify: true, httpCache: true };
  const totals = { peakJsHeap: jsHeap(), bytes: 0, resumes: 0, errors: 0, refetches: 0, requests: 0 };
  const sample = () => { const h = jsHeap(); if (h > totals.peakJsHeap) totals.peakJsHeap = h; };
  let lastEmit = 0;
  function emit(detail, force) {
    const t = now();
    if (!force && t - lastEmit < 80) return;
    lastEmit = t;
    if (typeof globalThis.dispatchEvent === 'function') globalThis.dispatchEvent(new CustomEvent('pyapp:progress', { detail }));
  }

  // An Error with a one-sentence message and a code the Python side maps to its own error.
  function fail(code, message, fatal) {
    const e = new Error(message);
    e.code = code;
    e.fatal = !!fatal;
    return e;
  }

  // SHA-256 of a Uint8Array as hex: crypto.subtle where the page has it (secure contexts),
  // else the vendored js-sha256 (globalThis.sha256, loaded by Python before streaming).
  async function sha256Hex(data) {
    if (globalThis.crypto && crypto.subtle) return hex(await crypto.subtle.digest('SHA-256', data));
    if (typeof globalThis.sha256 === 'function') return globalThis.sha256.hex(data);
    throw fail('integrity', 'cannot verify the weights: this page has no crypto.subtle (not a secure context) '
      + 'and the vendored SHA-256 library is not loaded', true);
  }
  const hasSubtle = () => !!(globalThis.crypto && crypto.subtle);

  // fetch() whose headers must arrive within ms; the returned abort() also stops the body.
  async function fetchTimed(url, init, ms) {
    const ctl = new AbortController();
    let timer = setTimeout(() => ctl.abort(), ms);
    try {
      const resp = await fetch(url, { ...init, signal: ctl.signal });
      clearTimeout(timer);
      timer = null;
      return { resp, ctl };
    } catch (e) {
      if (ctl.signal.aborted) throw fail('timeout', `no response from ${url} within ${ms / 1000} s`);
      throw e;
    } finally { if (timer) clearTimeout(timer); }
  }

  // reader.read() that gives up after ms without bytes (the request is aborted).
  function readTimed(reader, ctl, ms, url, view) {
    let timer;
    const stall = new Promise((_, rej) => {
      // reject before aborting, so the race settles with the stall, not the read's AbortError
      timer = setTimeout(() => { rej(fail('timeout', `the download of ${url} stalled: no bytes for ${ms / 1000} s`)); ctl.abort(); }, ms);
    });
    return Promise.race([view ? reader.read(view) : reader.read(), stall]).finally(() => clearTimeout(timer));
  }

  // Body bytes are read into reused 1 MiB bounce buffers (a BYOB reader) and copied into the
  // piece: the default reader allocates a new array per network read, 4.6 GB of garbage for a
  // 4.6 GB model, which the JS heap carries until a collection.  A read hands its buffer to the
  // stream and gets it back as value.buffer; one lost to an aborted read is simply replaced.
  const BOUNCE = 1 << 20;
  const bounces = [];
  function bodyReader(resp) {
    try { return { reader: resp.body.getReader({ mode: 'byob' }), byob: true }; } catch (e) {
      return { reader: resp.body.getReader(), byob: false };
    }
  }

  // Fill dst[pieces' dst offsets] with bytes [reqOff, reqOff+reqLen) of url, resuming on failure.
  async function readRequest(url, reqOff, reqLen, pieces, dst, st, reload, opts) {
    let got = 0;
    let tries = 0;
    while (got < reqLen) {
      const a = reqOff + got;
      const b = reqOff + reqLen - 1;
      try {
        totals.requests++;
        const { resp, ctl } = await fetchTimed(url, { headers: { Range: `bytes=${a}-${b}` },
          cache: (reload || tries > 0) ? 'reload' : (opts.httpCache ? 'default' : 'no-store') }, opts.stallMs);
        if (resp.status !== 206 && resp.status !== 200) {
          const client = resp.status >= 400 && resp.status < 500 && resp.status !== 408 && resp.status !== 429;
          throw fail('http', `the server answered HTTP ${resp.status} for ${url}`, client);
        }
        let skip = resp.status === 200 ? a : 0;   // the server ignored Range: skip to our offset
        if (resp.status === 206) {
          const cr = resp.headers.get('Content-Range') || '';
          const m = /bytes\s+(\d+)-/.exec(cr);
          if (m && Number(m[1]) !== a) throw fail('http', `the server's Content-Range ${cr} does not start at byte ${a}`);
        }
        const { reader, byob } = bodyReader(resp);
        let bounce = byob ? (bounces.pop() || new ArrayBuffer(BOUNCE)) : null;
        try {
          while (got < reqLen) {
            if (byob && !bounce.byteLength) bounce = new ArrayBuffer(BOUNCE);   // lost to an abort
            const { done, value } = await readTimed(reader, ctl, opts.stallMs, url,
              byob ? new Uint8Array(bounce) : null);
            if (byob && value) bounce = value.buffer;
            if (done) break;
            let v = value;
            if (skip) {
              if (v.length <= skip) { skip -= v.length; continue; }
              v = v.subarray(skip);
              skip = 0;
            }
            const n = Math.min(v.length, reqLen - got);
            // copy the kept pieces of file bytes [reqOff+got, reqOff+got+n) into dst
            const lo = reqOff + got;
            const hi = lo + n;
            for (const [po, pl, pd] of pieces) {
              const s = Math.max(lo, po);
              const e = Math.min(hi, po + pl);
              if (s < e) dst.set(v.subarray(s - lo, e - lo), pd + (s - po));
            }
            got += n; st.loaded += n; totals.bytes += n;
            sample();
            emit({ id: st.id, loaded: st.loaded, bytes: st.bytes, ms: now() - st.t0, layer: st.layer });
          }
        } finally {
          reader.cancel().catch(() => {});
          if (bounce && bounce.byteLength === BOUNCE && bounces.length < 8) bounces.push(bounce);
        }
        if (got < reqLen) { st.resumes++; totals.resumes++; }
      } catch (e) {
        st.errors++; totals.errors++;
        st.lastError = e;
        if (e && e.fatal) throw e;
      }
      if (got < reqLen) {
        if (++tries > opts.maxTries) {
          const why = st.lastError ? st.lastError.message : 'the body ended short';
          const err = fail(st.lastError && st.lastError.code === 'timeout' ? 'timeout' : 'network',
            `could not download the weights of ${st.id} after ${tries} tries (${why})`);
          throw err;
        }
        await sleep(Math.min(2000, 50 * 2 ** tries));
      }
    }
  }

  // Piece buffers are reused: a load allocates about as many as it has in flight, not one per
  // piece, so the JS heap holds no garbage of old pieces waiting for a collection.  A buffer goes
  // back with releaseBuffer() once its bytes are on the GPU (writeBuffer copies at the call).
  const POOL = { size: 16 << 20, keep: 4, free: [] };
  function takeBuffer(n) {
    if (n > POOL.size) return new Uint8Array(n);
    return new Uint8Array(POOL.free.pop() || new ArrayBuffer(POOL.size), 0, n);
  }
  function releaseBuffer(u8) {
    if (u8 && u8.buffer.byteLength === POOL.size && POOL.free.length < POOL.keep) POOL.free.push(u8.buffer);
  }

  // One manifest chunk: its (coalesced) requests, then the sha256 of the concatenated ranges.
  async function fetchChunk(url, requests, bytes, sha256, id, layer, userOpts) {
    const opts = { ...DEFAULTS, ...(userOpts || {}) };
    const st = { id, layer, bytes, loaded: 0, resumes: 0, errors: 0, refetches: 0, requests: requests.length,
                 t0: now(), msFetch: 0, msDigest: 0, lastError: null, verified: false };
    if (opts.verify && !sha256) throw fail('integrity', `the manifest gives no sha256 for ${id}`, true);
    const dst = takeBuffer(bytes);
    for (let attempt = 0; ; attempt++) {
      st.loaded = 0;
      const t1 = now();
      for (const [ro, rl, pieces] of requests) await readRequest(url, ro, rl, pieces, dst, st, attempt > 0, opts);
      st.msFetch += now() - t1;
      const t2 = now();
      const digest = opts.verify ? await sha256Hex(dst) : null;
      st.msDigest += now() - t2;
      st.verified = digest !== null;
      if (digest === null || digest === sha256) {
        st.ms = now() - st.t0;
        st.lastError = st.lastError ? String(st.lastError.message || st.lastError) : null;
        emit({ id, loaded: bytes, bytes, ms: st.ms, layer, done: true }, true);
        return { data: dst, stats: st };
      }
      st.refetches++; totals.refetches++;
      if (attempt + 1 >= opts.maxAttempts) {
        releaseBuffer(dst);
        throw fail('integrity', `the weights of ${id} failed their sha256 check ${opts.maxAttempts} times`, true);
      }
    }
  }

  // A small document (manifest, tokenizer, JSON API reply): the whole exchange within ms, retried
  // on network errors, timeouts and 5xx up to `tries` times.  Returns {ok, status, text | json}.
  // asBytes: the body as a Uint8Array (fetchDocParts joins parts before decoding).
  async function fetchDoc(url, init, ms, tries, asJson, asBytes) {
    let last = null;
    for (let i = 0; i < tries; i++) {
      if (i) await sleep(Math.min(2000, 100 * 2 ** i));
      try {
        const { resp, ctl } = await fetchTimed(url, init || {}, ms);
        const t = setTimeout(() => ctl.abort(), ms);
        let text;
        try {
          if (asBytes && resp.ok) return { ok: true, status: resp.status, bytes: new Uint8Array(await resp.arrayBuffer()) };
          text = await resp.text();
        } catch (e) {
          throw ctl.signal.aborted ? fail('timeout', `the reply from ${url} did not arrive within ${ms / 1000} s`) : e;
        } finally { clearTimeout(t); }
        if (resp.status >= 500 && i + 1 < tries) { last = fail('server', `HTTP ${resp.status} from ${url}`); continue; }
        let message = null;
        if (!resp.ok) { try { message = JSON.parse(text).error.message; } catch (e) { message = null; } }
        return { ok: resp.ok, status: resp.status, message, text: asJson && resp.ok ? null : text,
                 json: asJson && resp.ok ? JSON.parse(text) : null };
      } catch (e) {
        last = e;
        if (e && e.fatal) break;
      }
    }
    const why = last ? last.message : 'no reply';
    throw fail(last && last.code === 'timeout' ? 'timeout' : 'network', `could not fetch ${url} (${why})`);
  }

  // A document a static site stored in parts (each under the host's per-file cap): the parts'
  // bytes joined, then decoded once (a cut may fall inside a UTF-8 character).
  async function fetchDocParts(urls, init, ms, tries, asJson) {
    const parts = [];
    for (const u of urls) {
      const r = await fetchDoc(u, init, ms, tries, false, true);
      if (!r.ok) return r;
      parts.push(r.bytes);
    }
    const all = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    const text = new TextDecoder().decode(all);
    return { ok: true, status: 200, message: null, text: asJson ? null : text, json: asJson ? JSON.parse(text) : null };
  }

  // Tensor views for a Python sink: one JS array of subarrays, so Python crosses once per chunk.
  const views = (data, slices) => slices.map(([, off, len]) => data.subarray(off, off + len));

  function wasmHeap() {
    const py = globalThis.pyodide;
    return py && py._module ? py._module.HEAPU8.buffer.byteLength : 0;
  }

  async function gpuDone(device) { if (device) await device.queue.onSubmittedWorkDone(); }

  return {
    fetchChunk, releaseBuffer, fetchTimed, fetchDoc, fetchDocParts, views, jsHeap, wasmHeap, totals, sample, emit, gpuDone, hasSubtle, sha256Hex,
    resetTotals() { Object.assign(totals, { peakJsHeap: jsHeap(), bytes: 0, resumes: 0, errors: 0, refetches: 0, requests: 0 }); },
  };
})()
