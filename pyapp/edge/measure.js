// Measurement helpers of pyapp/edge/measure.py (evaluated once per page): a bare device, the two
// ways of uploading a chunk into GPU buffers it owns, and a plain fetch of the same bytes.
(() => {
  const now = () => performance.now();
  const align4 = (n) => (n + 3) & ~3;

  // A bare GPUDevice with the adapter's largest buffer limits.
  async function rawDevice() {
    if (!navigator.gpu) throw new Error('this browser has no navigator.gpu');
    const a = await navigator.gpu.requestAdapter();
    if (!a) throw new Error('navigator.gpu.requestAdapter() returned no adapter');
    return a.requestDevice({ requiredLimits: { maxBufferSize: a.limits.maxBufferSize,
      maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize } });
  }

  // Upload the tensors of one chunk into fresh GPU buffers: one FFI call per chunk.
  //   mode 'writeBuffer': createBuffer + queue.writeBuffer(buf, 0, data, off, len)
  //   mode 'mapped':      createBuffer({mappedAtCreation}) + set() into the mapped range + unmap
  function uploadTensors(device, data, slices, mode) {
    const t0 = now();
    const out = new Map();
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    for (const [name, off, len] of slices) {
      const size = align4(len);
      if (mode === 'mapped') {
        const buf = device.createBuffer({ size, usage, mappedAtCreation: true, label: name });
        new Uint8Array(buf.getMappedRange(0, size)).set(data.subarray(off, off + len));
        buf.unmap();
        out.set(name, buf);
      } else {
        const buf = device.createBuffer({ size, usage, label: name });
        if (len % 4 === 0) device.queue.writeBuffer(buf, 0, data, off, len);
        else { const pad = new Uint8Array(size); pad.set(data.subarray(off, off + len)); device.queue.writeBuffer(buf, 0, pad); }
        out.set(name, buf);
      }
    }
    return { buffers: out, ms: now() - t0 };
  }

  // The same bytes with a plain fetch().arrayBuffer() per request, for comparison.
  async function plainFetch(url, requests) {
    const t0 = now();
    let n = 0;
    for (const [ro, rl] of requests) {
      const r = await fetch(url, { headers: { Range: `bytes=${ro}-${ro + rl - 1}` }, cache: 'reload' });
      n += (await r.arrayBuffer()).byteLength;
    }
    return { bytes: n, ms: now() - t0 };
  }

  return { rawDevice, uploadTensors, plainFetch };
})()
