// The page's UI: thin.  All logic is Python (pyapp.edge); this file only wires controls to
// window.pyapp and renders the events Python and the weight streamer dispatch:
//   pyapp:status {message, phase}   pyapp:progress {id, layer, loaded, bytes, ms, done}
//   pyapp:token {text, id}          pyapp:stats {...}          pyapp:loaded {...}
//   pyapp:split {token, split, n_layers} (progressive: the split moved as layers landed;
//               {call, split, n_layers} for progressive embeddings)
const $ = (id) => document.getElementById(id);
const MB = (b) => (b / 1e6).toFixed(b < 1e7 ? 2 : 1) + ' MB';
const fmt = (v, d = 2) => (v === undefined || v === null ? '–' : Number(v).toFixed(d));
let busy = false;
const nLayers = {};          // model -> layers, from the server's /v1/models
let embedModel = null;       // the server's first embedding model
let defaultChoice = null;    // pyapp.defaultSplit() of the selected model
let formatSizes = {};        // format -> {bytes, vs_f32}, from pyapp.formats() of the selected model

function setStatus(msg, err) { const s = $('status'); s.textContent = msg; s.classList.toggle('err', !!err); }

addEventListener('pyapp:status', (e) => {
  const d = e.detail || {};
  setStatus(d.message, d.phase === 'error');
  if (d.phase === 'load' && Array.isArray(d.chunks)) {
    $('bars').innerHTML = '';
    for (const [id, bytes] of d.chunks) bar(id, bytes);
    $('load-total').textContent = MB(d.chunks.reduce((a, c) => a + c[1], 0));
  }
  if (d.phase === 'fallback') notice(d.message);
});

const bars = new Map();
function bar(id, bytes) {
  let b = bars.get(id);
  if (b && b.el.isConnected) return b;
  const el = document.createElement('div');
  el.className = 'bar';
  el.innerHTML = `<span>${id}</span><div class="track"><div class="fill"></div></div><span class="num">0 / ${MB(bytes || 0)}</span>`;
  $('bars').appendChild(el);
  b = { el, fill: el.querySelector('.fill'), num: el.querySelector('.num') };
  bars.set(id, b);
  return b;
}

addEventListener('pyapp:progress', (e) => {
  const d = e.detail;
  const b = bar(d.id, d.bytes);
  const pct = d.bytes ? (100 * d.loaded) / d.bytes : 0;
  b.fill.style.width = pct.toFixed(1) + '%';
  const mbs = d.ms > 0 ? d.loaded / 1e3 / d.ms : 0;
  b.num.textContent = `${MB(d.done ? d.bytes : d.loaded)} · ${mbs.toFixed(0)} MB/s`;
  b.el.classList.toggle('done', !!d.done);
});

// Progressive offload: the split moving live, next to the layer bars (a moved layer's bar is
// marked: it now runs on this GPU).
let splitPath = [];
addEventListener('pyapp:split', (e) => {
  const d = e.detail;
  if (d.call !== undefined) {       // progressive embeddings: the split of the coming calls
    $('embed-stats').textContent = `split ${d.split} / ${d.n_layers} from call ${d.call + 1} (progressive)`;
    return;
  }
  let line = $('split-live');
  if (!line) {
    line = document.createElement('p');
    line.id = 'split-live';
    line.className = 'muted';
    $('bars').before(line);
  }
  splitPath = splitPath.length ? splitPath : [d.n_layers];
  splitPath.push(d.split);
  line.textContent = `split ${splitPath.join(' → ')} (at token ${d.token}): layers ${d.split}..${d.n_layers - 1} run on this GPU`;
  $('s-split').textContent = `${d.split} / ${d.n_layers}`;
  for (const [id, b] of bars) {
    const m = /^layer\.(\d+)$/.exec(id);
    if (m) b.el.classList.toggle('on-edge', Number(m[1]) >= d.split);
  }
});
addEventListener('pyapp:start', () => { splitPath = []; const l = $('split-live'); if (l) l.textContent = ''; });

let cursor = null;
let firstAt = null;   // seconds from the start of decoding to the first token (Python's clock)
addEventListener('pyapp:token', (e) => {
  const d = e.detail;
  const out = $('out');
  if (!cursor) { cursor = document.createElement('span'); cursor.className = 'cursor'; out.appendChild(cursor); }
  cursor.before(document.createTextNode(d.text));
  out.scrollTop = out.scrollHeight;
  // live figures while streaming; the final ones come with pyapp:stats
  if (d.n === 1 || firstAt === null) { firstAt = d.elapsed; if (d.elapsed !== undefined) $('s-ttft').textContent = fmt(d.elapsed * 1000, 0) + ' ms'; }
  else if (d.elapsed > firstAt) $('s-tps').textContent = fmt((d.n - 1) / (d.elapsed - firstAt)) + ' …';
  $('s-tokens').textContent = String(d.n);
});
addEventListener('pyapp:start', (e) => {
  const s = e.detail;
  firstAt = null;
  for (const id of ['s-bytes', 's-load', 's-wasm', 's-js', 's-gpu']) $(id).textContent = '–';
  $('s-split').textContent = `${s.split} / ${s.n_layers}`;
  $('s-tps').textContent = '…'; $('s-ttft').textContent = '…'; $('s-tokens').textContent = '0'; $('s-ffi').textContent = '…';
  const badge = $('backend-badge');
  badge.textContent = s.backend === 'server' ? 'server only' : `WebGPU · split ${s.split}`;
  badge.classList.toggle('server', s.backend === 'server');
});

function showStats(s) {
  if (!s) return;
  $('s-tps').textContent = fmt(s.tokens_per_second);
  $('s-ttft').textContent = s.time_to_first_token !== undefined ? fmt(s.time_to_first_token * 1000, 0) + ' ms' : '–';
  $('s-split').textContent = s.split !== undefined ? `${s.split} / ${s.n_layers}` : '–';
  if (s.tokens !== undefined) $('s-tokens').textContent = `${s.tokens} (${s.finish_reason})`;
  $('s-ffi').textContent = s.ffi_crossings_per_token !== undefined ? fmt(s.ffi_crossings_per_token, 1) : '–';
  if (s.js_heap) $('s-js').textContent = MB(s.js_heap);
  if (s.weight_bytes !== undefined) $('s-bytes').textContent = MB(s.weight_bytes);
  if (s.format) $('s-format').textContent = s.format;
  if (s.wasm_heap) $('s-wasm').textContent = MB(s.wasm_heap);
  if (s.gpu_bytes !== undefined) $('s-gpu').textContent = MB(s.gpu_bytes);
  const badge = $('backend-badge');
  badge.textContent = s.backend === 'server' ? 'server only' : `WebGPU · split ${s.split}`;
  badge.classList.toggle('server', s.backend === 'server');
}
addEventListener('pyapp:stats', (e) => {
  const s = e.detail || {};
  if (s.kind === 'embed') {
    $('embed-stats').textContent = `${s.texts} texts · ${s.tokens} tokens · ${fmt(s.embeddings_per_second)} embeddings/s · `
      + `${s.backend === 'server' ? 'on the server' : `split ${s.split}`} · weights moved ${MB(s.weight_bytes)}`;
  } else showStats(s);
});
addEventListener('pyapp:loaded', (e) => {
  const d = e.detail;
  $('s-load').textContent = `${fmt(d.seconds, 1)} s · ${fmt(d.mb_per_s, 0)} MB/s`;
  $('s-bytes').textContent = MB(d.bytes);
  $('s-wasm').textContent = `${MB(d.wasm_heap_after)} (+${MB(d.wasm_heap_growth)})`;
  $('s-js').textContent = MB(d.peak_js_heap) + ' (load peak)';
  if (d.gpu_bytes) $('s-gpu').textContent = MB(d.gpu_bytes);
});

function notice(msg) { const n = $('notice'); n.textContent = msg; n.hidden = false; }

// The hint under the slider describes the chosen split; the default's reason when it is chosen.
function splitChanged() {
  const k = Number($('split').value);
  const n = Number($('split').max);
  $('split-out').textContent = String(k);
  if (!defaultChoice) return;
  if (k === defaultChoice.split) { $('split-why').textContent = defaultChoice.reason; return; }
  const where = k === 0 ? 'every layer on this GPU'
    : k >= n ? 'every layer on the server, the final norm and head on this GPU'
      : `layers 0..${k - 1} on the server, ${k}..${n - 1} and the head on this GPU`;
  $('split-why').textContent = `split ${k}: ${where} (default ${defaultChoice.split})`;
}

function greedyChanged() {
  const g = $('greedy').checked;
  $('temperature').disabled = g;
  $('topp').disabled = g;
}

// "q4_1: 96.6 MB, 0.18× f32": the bytes each of the model's weight files moves, against f32
const formatLabel = (f) => `${f.format}: ${MB(f.bytes)}` + (f.vs_f32 && f.format !== 'f32' ? `, ${f.vs_f32.toFixed(2)}× f32` : '');

async function refreshFormats() {
  const model = $('model').value;
  $('format').disabled = true;
  try {
    const r = await pyapp.formats(model);
    formatSizes = Object.fromEntries(r.formats.map((f) => [f.format, f]));
    $('format').innerHTML = r.formats.map((f) => `<option value="${f.format}">${formatLabel(f)}</option>`).join('');
    $('format').value = r.default;
    $('format').disabled = r.formats.length < 2;
  } catch (e) { $('format').innerHTML = ''; formatSizes = {}; $('format-why').textContent = 'formats: ' + e.message; return; }
  formatChanged();
}

function formatChanged() {
  const f = formatSizes[$('format').value];
  if (!f) return;
  const f32 = formatSizes.f32;
  $('format-why').textContent = f32 && f.format !== 'f32'
    ? `${f.format} moves ${MB(f.bytes)} of weights for the whole model, ${MB(f32.bytes - f.bytes)} less than f32 (${MB(f32.bytes)})`
    : `${f.format}: ${MB(f.bytes)} of weights for the whole model`;
}

async function refreshSplit() {
  const model = $('model').value;
  const n = nLayers[model];
  $('split').max = n;
  $('split-max').textContent = `${n} · server runs every layer`;
  defaultChoice = null;
  try {
    defaultChoice = await pyapp.defaultSplit(model);
    $('split').value = defaultChoice.split;
  } catch (e) { $('split-why').textContent = 'could not pick a split: ' + e.message; }
  splitChanged();
}

async function onGenerate() {
  if (busy) return;
  busy = true; $('go').disabled = true; $('stop').disabled = false;
  const out = $('out'); out.innerHTML = ''; cursor = null;
  const p = document.createElement('div'); p.className = 'prompt'; p.textContent = $('prompt').value; out.appendChild(p);
  const greedy = $('greedy').checked;
  try {
    const r = await pyapp.generate($('prompt').value, {
      model: $('model').value, split: Number($('split').value), chat: $('chat').checked,
      format: $('format').value || undefined,
      maxNewTokens: Number($('maxnew').value), greedy,
      temperature: greedy ? undefined : Number($('temperature').value), topP: Number($('topp').value),
      seed: Math.floor(Math.random() * 2 ** 31),
    });
    setStatus(`${r.ids.length} tokens · ${r.stats.finish_reason}`);
    showStats(r.stats);
  } catch (e) {
    setStatus('error: ' + e.message, true);
    console.error(e);
  } finally {
    if (cursor) { cursor.remove(); cursor = null; }
    busy = false; $('go').disabled = false; $('stop').disabled = true;
  }
}

async function onEmbed() {
  const texts = $('sentences').value.split('\n').map((s) => s.trim()).filter(Boolean);
  if (!texts.length) return;
  $('embed-go').disabled = true;
  try {
    setStatus('embedding…');
    const v = await pyapp.embed(texts, { model: embedModel, split: Number($('embed-split').value) });
    setStatus(`${texts.length} embeddings`);
    const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
    let h = '<table><tr><th></th>' + texts.map((t, j) => `<th title="${t.replace(/"/g, '&quot;')}">${j + 1}</th>`).join('') + '</tr>';
    texts.forEach((t, i) => {
      h += `<tr><th title="${t.replace(/"/g, '&quot;')}">${i + 1}. ${t.slice(0, 24).replace(/</g, '&lt;')}</th>` +
        v.map((b, j) => `<td style="background:rgba(110,231,183,${Math.max(0, cos(v[i], b)) * 0.35})">${cos(v[i], b).toFixed(3)}</td>`).join('') + '</tr>';
    });
    $('sim').innerHTML = h + '</table>';
  } catch (e) {
    $('sim').textContent = 'error: ' + e.message;
    setStatus('error: ' + e.message, true);
    console.error(e);
  } finally { $('embed-go').disabled = false; }
}

async function main() {
  $('split').addEventListener('input', splitChanged);
  $('greedy').addEventListener('change', greedyChanged);
  $('go').addEventListener('click', onGenerate);
  $('stop').addEventListener('click', () => pyapp.stop());
  $('embed-go').addEventListener('click', onEmbed);
  $('model').addEventListener('change', () => refreshFormats().then(refreshSplit));
  $('format').addEventListener('change', formatChanged);
  $('reset').addEventListener('click', () => location.reload());
  $('prompt').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) onGenerate(); });
  greedyChanged();
  await pyapp.ready;
  // the server's /v1/models (or, static/offline, the site's list: fields under `pyapp`)
  const ms = ((await pyapp.models()).data || []).map((m) => ({ ...(m.pyapp || {}), ...m }));
  for (const m of ms) nLayers[m.id] = m.n_layers;
  const gen = ms.filter((m) => m.kind === 'causal_lm').map((m) => m.id);
  const enc = ms.filter((m) => m.kind === 'encoder');
  $('model').innerHTML = gen.map((n) => `<option>${n}</option>`).join('');
  $('model').disabled = !gen.length;
  if (enc.length) {
    embedModel = enc[0].id;
    $('embed-model').textContent = `${embedModel} · cosine similarity`;
    $('embed-split').max = enc[0].n_layers;
    $('embed-split').value = Math.floor(enc[0].n_layers / 2);
  }
  const ad = await pyapp.adapter();
  $('s-adapter').textContent = ad.available ? `${ad.vendor || '?'} ${ad.architecture || ''}${ad.is_cpu ? ' (CPU)' : ''}` : 'none';
  if (!ad.available) {
    notice(`No WebGPU here: ${ad.reason}. Generation and embeddings run on the server (still streamed).`);
    $('split').disabled = true; $('embed-split').disabled = true;
    $('bars').innerHTML = '<p class="muted">No WebGPU: the server runs every layer, so no weights stream to this page.</p>';
  }
  if (gen.length) { await refreshFormats(); await refreshSplit(); }
  $('go').disabled = !gen.length; $('embed-go').disabled = !embedModel;
  setStatus(gen.length || embedModel ? 'ready' : 'this server has no models');
}
main().catch((e) => { setStatus('error: ' + e.message, true); console.error(e); });
