// Server-sent events from a POST (pyapp/edge/api.py's server fallback), evaluated once per page:
// returns a function (url, body, timeoutMs) -> {next(), cancel()}.  next() gives the next event's
// data, or null at the end; no bytes for timeoutMs is an error.
(async (url, body, timeoutMs) => {
  const fail = (code, message) => Object.assign(new Error(message), { code });
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), timeoutMs);
  let resp;
  try {
    resp = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: ctl.signal });
  } catch (e) {
    throw ctl.signal.aborted ? fail('timeout', `no response from ${url} within ${timeoutMs / 1000} s`) : e;
  } finally { clearTimeout(t); }
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try { msg = (await resp.json()).error.message || msg; } catch (e) { /* not JSON */ }
    throw fail('server', `the server refused the request: ${msg}`);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  const pending = [];
  const read = () => {
    let timer;
    const stall = new Promise((_, rej) => {
      timer = setTimeout(() => { rej(fail('timeout', `the server sent nothing for ${timeoutMs / 1000} s`)); ctl.abort(); }, timeoutMs);
    });
    return Promise.race([reader.read(), stall]).finally(() => clearTimeout(timer));
  };
  return {
    async next() {
      for (;;) {
        if (pending.length) return pending.shift();
        const i = buf.indexOf('\n\n');
        if (i >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = ev.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
          if (data) pending.push(data);
          continue;
        }
        const { done, value } = await read();
        if (done) return null;
        buf += value;
      }
    },
    cancel() { reader.cancel().catch(() => {}); },
  };
})
