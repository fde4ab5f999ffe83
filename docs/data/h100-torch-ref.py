"""Reference bandwidths on the same GPU: PyTorch device-to-device copy and cuBLAS f32 GEMV."""
import json, sys, torch
d = torch.device("cuda")
p = torch.cuda.get_device_properties(0)
res = {"gpu": p.name, "sms": p.multi_processor_count, "mem_GiB": round(p.total_memory / 2**30, 1),
       "torch": torch.__version__}
def bench(fn, reps=20, rounds=5):
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(rounds):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps): fn()
        e.record(); torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3 / reps)
    return best
for nbytes in (256 << 20, 1 << 30):
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=d).normal_()
    b = torch.empty_like(a)
    dt = bench(lambda: b.copy_(a))
    res[f"d2d_copy_{nbytes >> 20}MiB_GBps_read_plus_write"] = round(2 * nbytes / dt / 1e9, 1)
    del a, b
for N, K in ((16384, 16384), (8192, 8192), (49152, 576)):
    W = torch.randn(N, K, device=d); x = torch.randn(K, device=d); y = torch.empty(N, device=d)
    dt = bench(lambda: torch.mv(W, x, out=y))
    res[f"cublas_gemv_{N}x{K}_GBps"] = round((N * K + N + K) * 4 / dt / 1e9, 1)
    res[f"cublas_gemv_{N}x{K}_us"] = round(dt * 1e6, 2)
    del W, x, y
torch.cuda.empty_cache()
print(json.dumps(res, indent=1))
json.dump(res, open(sys.argv[1], "w"), indent=1)
