"""GPU speed table: gaussskip's CUDA kernels against the PyTorch fp16 peer, in one run.

Loads libgaussskip.so through ctypes (the C ABI: gs_model_from_parts, gs_context_create,
gs_skip, gs_denoise, gs_skip_trajectory), passes PyTorch tensors' device pointers and the
current stream, and times everything with CUDA events (median of warm repetitions).
The PyTorch peer is the logic of ../shared/bench/torch_peer.py (eager fp16 and the same ops
captured in a CUDA graph), run here on the same shapes, with eigenvector copies rotated where
one copy would fit in L2.

Columns: ours (skip, f16 I/O, f16 eigenvectors), PyTorch eager and graph, the roofline floor
max(bytes / copy bandwidth, flops / fp16 matmul rate) with bytes = 2 d r 2 + 2 B d 2 and
flops = 4 B d r, ours/PyTorch (best PyTorch form), ours/floor, achieved GB/s and TFLOP/s,
and the relative error of our output against float64. Then denoise and a 16-level trajectory
against 16 single skips.

Usage: python3 scripts/gpu_bench.py [--lib path/to/libgaussskip.so] [--quick]
Writes $OUT/gpu_bench.json when OUT is set.
"""
import argparse
import ctypes as C
import json
import os
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
DEV = "cuda"
GS_DEVICE_CUDA, GS_DTYPE_F16 = 2, 1


class Noise(C.Structure):
    _fields_ = [("alpha", C.c_double), ("sigma", C.c_double)]


def load(path):
    lib = C.CDLL(path)
    vp, sz = C.c_void_p, C.c_size_t
    lib.gs_last_error_message.restype = C.c_char_p
    lib.gs_model_from_parts.argtypes = [sz, sz, vp, vp, vp, C.c_float, C.POINTER(vp)]
    lib.gs_context_create.argtypes = [C.c_uint32, C.c_int32, C.POINTER(vp)]
    lib.gs_skip.argtypes = [vp, vp, C.c_uint32, vp, vp, sz, Noise, Noise, vp]
    lib.gs_denoise.argtypes = [vp, vp, C.c_uint32, vp, vp, sz, Noise, vp]
    lib.gs_skip_trajectory.argtypes = [vp, vp, C.c_uint32, vp, vp, sz, Noise, C.POINTER(Noise), sz, vp]
    lib.gs_model_free.argtypes = [vp]
    lib.gs_context_free.argtypes = [vp]
    return lib


def check(lib, status, what):
    if status != 0:
        sys.exit(f"{what} failed with status {status}: {lib.gs_last_error_message().decode()}")


def bench(fn, reps=50, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def ceilings():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=DEV).random_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), reps=20)
    bw = 2 * n / (t * 1e-3)
    A = torch.randn(8192, 8192, device=DEV, dtype=torch.float16)
    B = torch.randn_like(A)
    t = bench(lambda: A @ B, reps=20)
    tf = 2 * 8192**3 / (t * 1e-3)
    del src, dst, A, B
    torch.cuda.empty_cache()
    return bw, tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.environ.get("GAUSSSKIP_LIB", "target/release/libgaussskip.so"))
    ap.add_argument("--quick", action="store_true", help="d = 3072 only")
    args = ap.parse_args()
    lib = load(args.lib)
    ctx = C.c_void_p()
    check(lib, lib.gs_context_create(GS_DEVICE_CUDA, 0, C.byref(ctx)), "gs_context_create")

    bw, tf = ceilings()
    name = torch.cuda.get_device_name()
    print(f"device {name}; ceilings: copy {bw / 1e12:.2f} TB/s, fp16 gemm {tf / 1e12:.0f} TFLOP/s", flush=True)
    res = dict(device=name, bw=bw, fp16_flops=tf, skip=[], denoise=[], trajectory=[])
    shapes = [(3072, 3072), (12288, 12288), (16384, 16384), (12288, 1024), (16384, 1024)]
    if args.quick:
        shapes = shapes[:1]
    ss, st = 80.0, 10.0
    hdr = f"{'d':>6} {'r':>6} {'B':>4} | {'ours ms':>8} {'torch':>8} {'graph':>8} {'floor':>8} | {'/torch':>6} {'/floor':>6} | {'GB/s':>6} {'TFLOP/s':>7} | relerr"
    print(hdr, flush=True)
    for d, r in shapes:
        ncopies = max(1, min(6, int(2e8 // (d * r * 2))))
        lam = (torch.rand(r, device=DEV) * 10).sort(descending=True).values
        mu = torch.randn(d, device=DEV)
        Us16, models = [], []
        for _ in range(ncopies):
            q, _ = torch.linalg.qr(torch.randn(d, r, device=DEV, dtype=torch.float32))
            Us16.append(q.half().contiguous())
            e = q.t().contiguous().cpu()
            m = C.c_void_p()
            mu_h, lam_h = mu.cpu(), lam.cpu()
            check(lib, lib.gs_model_from_parts(d, r, mu_h.data_ptr(), lam_h.data_ptr(), e.data_ptr(), 0.0, C.byref(m)), "gs_model_from_parts")
            models.append((m, q))
            del e
        s = st / ss
        coef = torch.sqrt((lam + st**2) / (lam + ss**2)) - s
        for B in [1, 16, 64, 256]:
            x16 = (torch.randn(B, d, device=DEV) * 80).half()
            out16 = torch.empty_like(x16)
            k = [0]

            def ours():
                m = models[k[0] % ncopies][0]
                k[0] += 1
                check(lib, lib.gs_skip(ctx, m, GS_DTYPE_F16, x16.data_ptr(), out16.data_ptr(), B,
                                       Noise(1.0, ss), Noise(1.0, st), torch.cuda.current_stream().cuda_stream), "gs_skip")

            def torch16():
                U = Us16[k[0] % ncopies]
                k[0] += 1
                xc = x16 - mu.half()
                return mu.half() + s * xc + ((xc @ U) * coef.half()) @ U.T

            t_ours = bench(ours)
            t_torch = bench(torch16)
            graphs = []
            for U in Us16:
                g = torch.cuda.CUDAGraph()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        xc = x16 - mu.half()
                        _y = mu.half() + s * xc + ((xc @ U) * coef.half()) @ U.T
                torch.cuda.current_stream().wait_stream(side)
                with torch.cuda.graph(g):
                    xc = x16 - mu.half()
                    _y = mu.half() + s * xc + ((xc @ U) * coef.half()) @ U.T
                graphs.append(g)
            kg = [0]

            def replay():
                graphs[kg[0] % len(graphs)].replay()
                kg[0] += 1

            t_graph = bench(replay)
            del graphs
            # correctness of our output against float64 on the same model (model 0)
            k[0] = 0
            out16.fill_(float("nan"))
            ours()
            torch.cuda.synchronize()
            q = models[0][1].double()
            xd = x16.double() - mu.double()
            ref = mu.double() + s * xd + ((xd @ q) * coef.double()) @ q.T
            relerr = ((out16.double() - ref).norm() / ref.norm()).item()
            bytes_ = 2 * d * r * 2 + 2 * B * d * 2
            flops = 4 * B * d * r
            floor = max(bytes_ / bw, flops / tf) * 1e3
            best = min(t_torch, t_graph)
            row = dict(d=d, r=r, B=B, ours_ms=t_ours, torch_fp16_ms=t_torch, torch_graph_ms=t_graph,
                       floor_ms=floor, relerr=relerr, gbps=bytes_ / (t_ours * 1e-3) / 1e9,
                       tflops=flops / (t_ours * 1e-3) / 1e12)
            res["skip"].append(row)
            print(f"{d:6d} {r:6d} {B:4d} | {t_ours:8.3f} {t_torch:8.3f} {t_graph:8.3f} {floor:8.3f} | "
                  f"{t_ours / best:6.2f} {t_ours / floor:6.2f} | {row['gbps']:6.0f} {row['tflops']:7.1f} | {relerr:.1e}", flush=True)

            if B in (1, 64):
                k[0] = 0

                def den():
                    m = models[k[0] % ncopies][0]
                    k[0] += 1
                    check(lib, lib.gs_denoise(ctx, m, GS_DTYPE_F16, x16.data_ptr(), out16.data_ptr(), B,
                                              Noise(1.0, st), torch.cuda.current_stream().cuda_stream), "gs_denoise")

                t_den = bench(den)
                res["denoise"].append(dict(d=d, r=r, B=B, ms=t_den, floor_ms=floor))
                levels = (Noise * 16)(*[Noise(1.0, ss * (1 - i / 16)) for i in range(16)])
                traj = torch.empty(16 * B, d, device=DEV, dtype=torch.float16)

                def trajectory():
                    m = models[k[0] % ncopies][0]
                    k[0] += 1
                    check(lib, lib.gs_skip_trajectory(ctx, m, GS_DTYPE_F16, x16.data_ptr(), traj.data_ptr(), B,
                                                      Noise(1.0, ss), levels, 16, torch.cuda.current_stream().cuda_stream),
                          "gs_skip_trajectory")

                t_traj = bench(trajectory)
                res["trajectory"].append(dict(d=d, r=r, B=B, ms=t_traj, skip_ms=t_ours))
                print(f"{'':>18} denoise {t_den:8.3f} ms (floor {floor:.3f});  trajectory of 16 {t_traj:8.3f} ms = "
                      f"{t_traj / t_ours:.2f} skips", flush=True)
                del traj
        for m, _ in models:
            lib.gs_model_free(m)
        del Us16, models
        torch.cuda.empty_cache()
    lib.gs_context_free(ctx)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_bench.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
