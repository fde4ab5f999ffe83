// Times the WGSL GEMV `code` (pyapp/kernels/gemv_bench.wgsl) on `device`: `iters` dispatches of
// a rows x cols f32 matrix in one pass; returns {ms per dispatch, gflops} (pyapp/edge/split.py).
(async (device, code, rows, cols, iters) => {
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const S = GPUBufferUsage.STORAGE;
  const mk = (n) => device.createBuffer({ size: n * 4, usage: S });
  const W = mk(rows * cols);
  const x = mk(cols);
  const y = mk(rows);
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [
    { binding: 0, resource: { buffer: W } }, { binding: 1, resource: { buffer: x } }, { binding: 2, resource: { buffer: y } }] });
  const run = async (k) => {
    const enc = device.createCommandEncoder();
    const p = enc.beginComputePass();
    p.setPipeline(pipe);
    p.setBindGroup(0, bg);
    for (let i = 0; i < k; i++) p.dispatchWorkgroups(Math.ceil(rows / 64));
    p.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await run(1);
  const t0 = performance.now();
  await run(iters);
  const ms = (performance.now() - t0) / iters;
  W.destroy(); x.destroy(); y.destroy();
  return { ms, gflops: (2 * rows * cols) / (ms * 1e6) };
})
