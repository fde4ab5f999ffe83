// The browser binding's JS side (pyapp/gpu/browser.py loads it once with run_js):
// every WebGPU call of a step happens here, so a step is O(1) Python->JS crossings.
// The file is one expression whose value is the helper object.
(() => {
  const U = () => GPUBufferUsage;
  const H = {
    async requestDevice(powerPreference, maxLimits = true) {
      if (!globalThis.navigator || !navigator.gpu)
        throw new Error('navigator.gpu is missing (WebGPU is off or unsupported in this browser)');
      const adapter = await navigator.gpu.requestAdapter(powerPreference ? {powerPreference} : undefined);
      if (!adapter) throw new Error('navigator.gpu.requestAdapter() returned null');
      const want = ['subgroups', 'shader-f16', 'timestamp-query'].filter(f => adapter.features.has(f));
      const L = adapter.limits;
      // the adapter's largest buffers and bindings (WebGPU's defaults are 256 / 128 MiB)
      const sizes = maxLimits ? {maxBufferSize: L.maxBufferSize,
                                 maxStorageBufferBindingSize: L.maxStorageBufferBindingSize} : {};
      const device = await adapter.requestDevice({requiredFeatures: want, requiredLimits: {
        ...sizes,
        maxStorageBuffersPerShaderStage: Math.min(L.maxStorageBuffersPerShaderStage, 10),
        maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize}});
      const info = adapter.info || {};
      const state = {lost: null, errors: []};
      device.lost.then(i => { state.lost = `WebGPU device lost (${i.reason}): ${i.message}`; });
      device.addEventListener('uncapturederror', e => { state.errors.push(e.error.constructor.name + ': ' + e.error.message); });
      return {device, state,
        // WGSL language features live on navigator.gpu, not the device: the `sgq` GEMV's
        // dot4I8Packed is recorded among the features under its WGSL name
        features: [...device.features, ...(navigator.gpu.wgslLanguageFeatures?.has('packed_4x8_integer_dot_product')
                                            ? ['packed_4x8_integer_dot_product'] : [])],
        limits: {max_storage_binding: device.limits.maxStorageBufferBindingSize,
                 max_buffer: device.limits.maxBufferSize,
                 max_workgroups: device.limits.maxComputeWorkgroupsPerDimension,
                 max_storage_buffers: device.limits.maxStorageBuffersPerShaderStage,
                 max_workgroup_storage: device.limits.maxComputeWorkgroupStorageSize},
        info: {vendor: info.vendor || '', architecture: info.architecture || '', device: info.device || '',
               description: info.description || '',
               is_fallback: !!(adapter.isFallbackAdapter || info.isFallbackAdapter),
               subgroup_min_size: info.subgroupMinSize || 0, subgroup_max_size: info.subgroupMaxSize || 0}};
    },
    createBuffer(device, size, kind) {
      const u = U();
      const usage = kind === 'uniform' ? (u.UNIFORM | u.COPY_DST)
                  : kind === 'readback' ? (u.MAP_READ | u.COPY_DST)
                  : (u.STORAGE | u.COPY_SRC | u.COPY_DST);
      return device.createBuffer({size, usage});
    },
    write(device, buf, off, data) {
      let v = data;
      if (v instanceof ArrayBuffer) v = new Uint8Array(v);
      else if (!(v instanceof Uint8Array)) v = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      if (v.byteLength % 4) { const p = new Uint8Array((v.byteLength + 3) & ~3); p.set(v); v = p; }
      device.queue.writeBuffer(buf, off, v);
    },
    pipeline(device, code) {
      const module = device.createShaderModule({code});
      return device.createComputePipeline({layout: 'auto', compute: {module, entryPoint: 'main'}});
    },
    bindGroup(device, pipeline, entries) {
      return device.createBindGroup({layout: pipeline.getBindGroupLayout(0),
        entries: entries.map(([binding, buffer, offset, size]) =>
          ({binding, resource: size ? {buffer, offset, size} : {buffer}}))});
    },
    // one command buffer: rec[a, b) in one pass, then the copies
    encode(device, rec, a, b, copies) {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (let i = a; i < b; i++) {
        const [p, g, x, y, z] = rec[i];
        pass.setPipeline(p); pass.setBindGroup(0, g); pass.dispatchWorkgroups(x, y, z);
      }
      pass.end();
      for (const [s, so, d, dof, n] of copies) enc.copyBufferToBuffer(s, so, d, dof, n);
      return enc.finish();
    },
    sameCopies(a, b) {
      return a.length === b.length && a.every((c, i) => c.every((v, j) => v === b[i][j]));
    },
    // ends: each chunk's end index in rec (null: one chunk); a chunk is its own encoder, pass
    // and queue.submit, so the GPU side starts on the first while this loop records the rest;
    // the copies ride in the last; one pair of error scopes covers every chunk. ahead: then
    // encode rec + copies again for the next submit of them (Device.submit in device.py)
    submit(device, state, rec, writes, copies, ends, ahead) {
      for (const [buf, off, data] of writes) H.write(device, buf, off, data);
      device.pushErrorScope('out-of-memory');
      device.pushErrorScope('validation');
      const pre = state.ahead;
      state.ahead = null;
      let n = 1;
      if (pre && pre.rec === rec && H.sameCopies(pre.copies, copies)) {
        device.queue.submit([pre.cb]);
      } else {
        const cut = ends && ends.length ? ends : [rec.length];
        for (let c = 0, a = 0; c < cut.length; a = cut[c++])
          device.queue.submit([H.encode(device, rec, a, cut[c], c === cut.length - 1 ? copies : [])]);
        n = cut.length;
      }
      if (ahead) state.ahead = {rec, copies, cb: H.encode(device, rec, 0, rec.length, copies)};
      for (let i = 0; i < 2; i++)
        device.popErrorScope().then(e => { if (e) state.errors.push(e.constructor.name + ': ' + e.message); });
      return n;
    },
    async readU32(device, state, buf, off) {
      await buf.mapAsync(GPUMapMode.READ, off, 4);
      const v = new Uint32Array(buf.getMappedRange(off, 4))[0];
      buf.unmap();
      H.raise(state);
      return v;
    },
    async read(device, state, buf, off, size) {
      let src = buf, soff = off;
      if (!(buf.usage & GPUBufferUsage.MAP_READ)) {
        src = device.createBuffer({size: (size + 3) & ~3, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(buf, off, src, 0, (size + 3) & ~3);
        device.queue.submit([enc.finish()]);
        soff = 0;
      }
      await src.mapAsync(GPUMapMode.READ, soff, (size + 3) & ~3);
      const out = new Uint8Array(src.getMappedRange(soff, (size + 3) & ~3).slice(0, size));
      src.unmap();
      if (src !== buf) src.destroy();
      H.raise(state);
      return out;
    },
    async check(device, state) { await device.queue.onSubmittedWorkDone(); H.raise(state); },
    raise(state) {
      if (state.lost) throw new Error(state.lost);
      if (state.errors.length) { const m = state.errors.join('\n'); state.errors.length = 0; throw new Error('WebGPU error: ' + m); }
    },
    now() { return performance.now() / 1000; },
  };
  return H;
})()
