// The split session's WebSocket (pyapp/edge/session.py), evaluated once per page: returns a
// factory.  Binary int32 ids out, binary f32 hidden states in, JSON text for control messages.
// Every wait is bounded: opening within `timeoutMs`, each reply within `timeoutMs`.
((url, timeoutMs) => {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const queue = [];
  const waiters = [];
  let closed = null;
  const fail = (code, message) => Object.assign(new Error(message), { code });
  const deliver = (m) => { const w = waiters.shift(); if (w) w.resolve(m); else queue.push(m); };
  ws.onmessage = (e) => deliver(typeof e.data === 'string' ? { text: e.data } : { data: new Float32Array(e.data) });
  ws.onclose = (e) => {
    closed = `the server closed the session's connection (code ${e.code}${e.reason ? ': ' + e.reason : ''})`;
    while (waiters.length) waiters.shift().reject(fail('network', closed));
  };
  const opened = new Promise((resolve, reject) => {
    const t = setTimeout(() => { ws.close(); reject(fail('timeout', `the session's WebSocket did not open within ${timeoutMs / 1000} s`)); }, timeoutMs);
    ws.onopen = () => { clearTimeout(t); resolve(true); };
    ws.onerror = () => { clearTimeout(t); reject(fail('network', `could not open the session's WebSocket ${url}`)); };
  });
  const check = () => { if (closed) throw fail('network', closed); };
  return {
    opened,
    sendIds(ids) { check(); ws.send(Int32Array.from(ids)); },
    sendText(s) { check(); ws.send(s); },
    sendBytes(u8) { check(); ws.send(u8); },
    recv() {
      if (queue.length) return Promise.resolve(queue.shift());
      if (closed) return Promise.reject(fail('network', closed));
      return new Promise((resolve, reject) => {
        const w = { resolve: (m) => { clearTimeout(t); resolve(m); }, reject: (e) => { clearTimeout(t); reject(e); } };
        const t = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
          ws.close();
          reject(fail('timeout', `the server sent nothing on the session for ${timeoutMs / 1000} s`));
        }, timeoutMs);
        waiters.push(w);
      });
    },
    close() { ws.close(); },
    get isOpen() { return !closed && ws.readyState === 1; },
  };
})
