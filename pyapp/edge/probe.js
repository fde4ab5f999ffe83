// What this page's WebGPU adapter is (pyapp/edge/split.py), without opening a device.
(async () => {
  const out = { available: false, reason: '' };
  if (!globalThis.navigator || !navigator.gpu) { out.reason = 'this browser has no navigator.gpu (WebGPU is off or unsupported)'; return out; }
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter(); } catch (e) { out.reason = 'requestAdapter failed: ' + e.message; return out; }
  if (!adapter) { out.reason = 'navigator.gpu.requestAdapter() returned no adapter (blocked or no GPU)'; return out; }
  const info = adapter.info || {};
  Object.assign(out, {
    available: true, vendor: info.vendor || '', architecture: info.architecture || '',
    description: info.description || '', is_fallback: !!(adapter.isFallbackAdapter || info.isFallbackAdapter),
    max_buffer_size: Number(adapter.limits.maxBufferSize),
    max_storage_binding: Number(adapter.limits.maxStorageBufferBindingSize),
    features: Array.from(adapter.features || []),
  });
  return out;
})
