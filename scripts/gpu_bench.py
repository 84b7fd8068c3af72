"""GPU speed table: gaussskip's CUDA kernels against the PyTorch fp16 peer, in one run.

Loads libgaussskip.so through ctypes (the C ABI), passes PyTorch tensors' device pointers and
the current stream, and times everything with CUDA events (median of warm repetitions). The
PyTorch peer is the logic of ../shared/bench/torch_peer.py (eager fp16, and the same ops
captured in a CUDA graph: the form to beat), run here on the same shapes, with eigenvector
copies rotated where one copy would fit in L2.

Both kernel generations side by side: one context per version (GAUSSSKIP_KERNELS=v1 / v2 when
each is created), same models, inputs and streams.

Per call (skip, f16 I/O, f16 eigenvectors): for each version, ours as an eager call (host
overhead included: what users pay) and replayed from a graph captured with torch.cuda.graph;
PyTorch eager and graph; the roofline floor max(bytes / copy bandwidth, flops / fp16 matmul
rate) with bytes = 2 d r 2 + 2 B d 2 and flops = 4 B d r; the ratios (v2 against the best
PyTorch form, against the floor, against v1), achieved GB/s and TFLOP/s, and the relative
error against float64.

Per launch (gs_context_time_launches, CUDA events around each launch): the projection and the
back-projection, each with its blocks, split-K count, resident blocks per multiprocessor,
waves, time, its own floor (eigenvectors + its share of rows), achieved GB/s and TFLOP/s; with
--sweep also at other split counts, to see what the split-K tail costs.

Exits 1 when any result breaks the precision contract (relative error > 2e-3 against float64,
SPEC §5) or any call fails.

Usage: python3 scripts/gpu_bench.py [--lib path/to/libgaussskip.so] [--quick] [--sweep]
                                    [--splits P,B] [--versions v1,v2] [--dry-run]
--dry-run prints the shapes and the tables' columns without a GPU (no torch needed).
Writes $OUT/gpu_bench.json when OUT is set.
"""
import argparse
import ctypes as C
import json
import os
import sys

torch = None  # imported in main() unless --dry-run
DEV = "cuda"
SHAPES = [(3072, 3072), (12288, 12288), (16384, 16384), (12288, 1024), (16384, 1024)]
BATCHES = [1, 16, 64, 256]
GS_DEVICE_CUDA, GS_DTYPE_F16 = 2, 1
CONTRACT = 2e-3


class Noise(C.Structure):
    _fields_ = [("alpha", C.c_double), ("sigma", C.c_double)]


class LaunchTimes(C.Structure):
    _fields_ = [
        ("launch_ms", C.c_double * 2),
        ("blocks", C.c_uint32 * 2),
        ("splits", C.c_uint32 * 2),
        ("block_rows", C.c_uint32 * 2),
        ("blocks_per_sm", C.c_uint32 * 2),
        ("waves", C.c_double * 2),
    ]


def load(path):
    lib = C.CDLL(path)
    vp, sz, u32 = C.c_void_p, C.c_size_t, C.c_uint32
    lib.gs_last_error_message.restype = C.c_char_p
    lib.gs_model_from_parts.argtypes = [sz, sz, vp, vp, vp, C.c_float, C.POINTER(vp)]
    lib.gs_context_create.argtypes = [u32, C.c_int32, C.POINTER(vp)]
    lib.gs_skip.argtypes = [vp, vp, u32, vp, vp, sz, Noise, Noise, vp]
    lib.gs_denoise.argtypes = [vp, vp, u32, vp, vp, sz, Noise, vp]
    lib.gs_skip_trajectory.argtypes = [vp, vp, u32, vp, vp, sz, Noise, C.POINTER(Noise), sz, vp]
    lib.gs_context_time_launches.argtypes = [vp, vp, u32, vp, vp, sz, Noise, Noise, u32, u32, u32, vp,
                                             C.POINTER(LaunchTimes)]
    lib.gs_model_free.argtypes = [vp]
    lib.gs_context_free.argtypes = [vp]
    return lib


FAILURES = []


def check(lib, status, what):
    if status != 0:
        msg = f"{what} failed with status {status}: {lib.gs_last_error_message().decode()}"
        FAILURES.append(msg)
        raise RuntimeError(msg)


def bench(fn, reps=30, warm=5):
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


def graphed(fns):
    """CUDA graphs of `fns`, captured PyTorch's way (warm-up on a side stream), replayed in turn."""
    graphs = []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)
    k = [0]

    def replay():
        graphs[k[0] % len(graphs)].replay()
        k[0] += 1

    return replay, graphs


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


def print_call_table(name, versions, rows):
    """Per call: each version replayed from a graph (eager in the JSON), PyTorch eager and graph,
    the floor; ratios of the newest version against the best PyTorch form, the floor and the
    oldest version; its GB/s and TFLOP/s; the worst relative error of any version."""
    new, old = versions[-1], versions[0]
    print(f"\nper call, skip f16 I/O f16 eigenvectors, {name}: times in ms, ours replayed from a graph; "
          f"ratios and rates are {new}'s")
    cols = " ".join(f"{v + ' gr':>8}" for v in versions)
    print(f"{'d':>6} {'r':>6} {'B':>4} | {cols} {new + ' eag':>8} | {'torch':>7} {'t.graph':>7} | {'floor':>7} | "
          f"{'/torch':>6} {'/floor':>6} {'/' + old:>6} | {'GB/s':>6} {'TFLOP/s':>7} | relerr")
    for w in rows:
        best = min(w["torch_fp16_ms"], w["torch_graph_ms"])
        ours = " ".join(f"{w[v + '_graph_ms']:8.3f}" for v in versions)
        g = w[f"{new}_graph_ms"]
        print(f"{w['d']:6d} {w['r']:6d} {w['B']:4d} | {ours} {w[new + '_ms']:8.3f} | "
              f"{w['torch_fp16_ms']:7.3f} {w['torch_graph_ms']:7.3f} | {w['floor_ms']:7.3f} | "
              f"{g / best:6.2f} {g / w['floor_ms']:6.2f} {g / w[old + '_graph_ms']:6.2f} | "
              f"{w['gbps'][new]:6.0f} {w['tflops'][new]:7.1f} | {max(w['relerr'].values()):.1e}")


def print_launch_table(sms, rows):
    print(f"\nper launch ({sms} SMs): forced = split override (0 = rule)")
    print(f"{'ver':>3} {'d':>6} {'r':>6} {'B':>4} {'launch':>11} {'forced':>7} | {'blocks':>6} {'splits':>6} "
          f"{'BM':>4} {'res/SM':>6} {'waves':>6} | {'ms':>7} {'floor':>7} {'/floor':>6} | {'GB/s':>6} {'TFLOP/s':>7}")
    for w in rows:
        print(f"{w['version']:>3} {w['d']:6d} {w['r']:6d} {w['B']:4d} {w['launch']:>11} "
              f"{w['forced'][0]:>3},{w['forced'][1]:<3} | {w['blocks']:6d} {w['splits']:6d} {w['bm']:4d} "
              f"{w['blocks_per_sm']:6d} {w['waves']:6.2f} | {w['ms']:7.3f} {w['floor_ms']:7.3f} "
              f"{w['ms'] / w['floor_ms']:6.2f} | {w['gbps']:6.0f} {w['tflops']:7.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.environ.get("GAUSSSKIP_LIB", "target/release/libgaussskip.so"))
    ap.add_argument("--quick", action="store_true", help="d = 3072 only")
    ap.add_argument("--sweep", action="store_true", help="per-launch times at other split counts too")
    ap.add_argument("--splits", default="0,0", help="split-K override P,B for the per-launch table (0 = rule)")
    ap.add_argument("--versions", default="v1,v2", help="kernel generations to measure, comma-separated")
    ap.add_argument("--dry-run", action="store_true", help="print the shapes and columns, touch no GPU")
    args = ap.parse_args()
    force = [int(v) for v in args.splits.split(",")]
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not versions or any(v not in ("v1", "v2") for v in versions):
        ap.error(f"--versions takes v1 and/or v2, not {args.versions!r}")
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.dry_run:
        print(f"versions {', '.join(versions)}; shapes (d, r) x B: "
              + "; ".join(f"({d}, {r}) x {BATCHES}" for d, r in shapes))
        print_call_table("(dry run)", versions, [])
        print_launch_table(0, [])
        return
    global torch
    import torch as _torch
    torch = _torch
    torch.backends.cuda.matmul.allow_tf32 = False
    lib = load(args.lib)
    ctxs = {}
    for v in versions:
        # each context reads GAUSSSKIP_KERNELS once, when it is created
        os.environ["GAUSSSKIP_KERNELS"] = v
        c = C.c_void_p()
        check(lib, lib.gs_context_create(GS_DEVICE_CUDA, 0, C.byref(c)), f"gs_context_create ({v})")
        ctxs[v] = c
    ctx = ctxs[versions[-1]]  # denoise and trajectories: the newest version measured

    bw, tf = ceilings()
    name = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device {name} ({sms} SMs); ceilings: copy {bw / 1e12:.2f} TB/s, fp16 gemm {tf / 1e12:.0f} TFLOP/s",
          flush=True)
    res = dict(device=name, bw=bw, fp16_flops=tf, versions=versions, skip=[], launches=[], denoise=[],
               trajectory=[])
    ss, st = 80.0, 10.0
    call_rows, launch_rows = [], []
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
            check(lib, lib.gs_model_from_parts(d, r, mu_h.data_ptr(), lam_h.data_ptr(), e.data_ptr(), 0.0,
                                               C.byref(m)), "gs_model_from_parts")
            models.append((m, q))
            del e
        s = st / ss
        coef = torch.sqrt((lam + st**2) / (lam + ss**2)) - s
        for B in BATCHES:
            x16 = (torch.randn(B, d, device=DEV) * 80).half()
            out16 = torch.empty_like(x16)
            k = [0]

            def call_with(c, m):
                def call():
                    check(lib, lib.gs_skip(c, m, GS_DTYPE_F16, x16.data_ptr(), out16.data_ptr(), B,
                                           Noise(1.0, ss), Noise(1.0, st), torch.cuda.current_stream().cuda_stream),
                          "gs_skip")
                return call

            def torch_with(U):
                def peer():
                    xc = x16 - mu.half()
                    return mu.half() + s * xc + ((xc @ U) * coef.half()) @ U.T
                return peer

            peers = [torch_with(U) for U in Us16]

            def torch16():
                peers[k[0] % ncopies]()
                k[0] += 1

            t_torch = bench(torch16)
            replay_torch, gt = graphed(peers)
            t_tgraph = bench(replay_torch)
            del gt
            # float64 reference on model 0
            q = models[0][1].double()
            xd = x16.double() - mu.double()
            ref = mu.double() + s * xd + ((xd @ q) * coef.double()) @ q.T
            bytes_ = 2 * d * r * 2 + 2 * B * d * 2
            flops = 4 * B * d * r
            floor = max(bytes_ / bw, flops / tf) * 1e3
            row = dict(d=d, r=r, B=B, torch_fp16_ms=t_torch, torch_graph_ms=t_tgraph, floor_ms=floor,
                       gbps={}, tflops={}, relerr={})
            for v in versions:
                ours_calls = [call_with(ctxs[v], m) for m, _ in models]

                def ours():
                    ours_calls[k[0] % ncopies]()
                    k[0] += 1

                t_ours = bench(ours)
                replay_ours, go = graphed(ours_calls)
                t_ograph = bench(replay_ours)
                errs = []
                for run in (ours_calls[0], lambda: go[0].replay()):
                    out16.fill_(float("nan"))
                    run()
                    torch.cuda.synchronize()
                    errs.append(((out16.double() - ref).norm() / ref.norm()).item())
                del go
                relerr = max(errs)
                if not relerr <= CONTRACT:
                    FAILURES.append(f"skip {v} d={d} r={r} B={B}: relative error {relerr:.2e} > {CONTRACT}")
                row[f"{v}_ms"] = t_ours
                row[f"{v}_graph_ms"] = t_ograph
                row["relerr"][v] = relerr
                row["gbps"][v] = bytes_ / (t_ograph * 1e-3) / 1e9
                row["tflops"][v] = flops / (t_ograph * 1e-3) / 1e12
            res["skip"].append(row)
            call_rows.append(row)

            # per launch, each version
            for v in versions:
                lt = LaunchTimes()
                check(lib, lib.gs_context_time_launches(ctxs[v], models[0][0], GS_DTYPE_F16, x16.data_ptr(),
                                                        out16.data_ptr(), B, Noise(1.0, ss), Noise(1.0, st),
                                                        force[0], force[1], 20,
                                                        torch.cuda.current_stream().cuda_stream, C.byref(lt)),
                      "gs_context_time_launches")
                sweeps = [tuple(force)]
                if args.sweep:
                    auto = (lt.splits[0], lt.splits[1])
                    sweeps += [(1, 1), (max(1, auto[0] // 2), max(1, auto[1] // 2)), (2 * auto[0], 2 * auto[1])]
                for sp in sweeps:
                    lt = LaunchTimes()
                    check(lib, lib.gs_context_time_launches(ctxs[v], models[0][0], GS_DTYPE_F16, x16.data_ptr(),
                                                            out16.data_ptr(), B, Noise(1.0, ss), Noise(1.0, st),
                                                            sp[0], sp[1], 20, torch.cuda.current_stream().cuda_stream,
                                                            C.byref(lt)), "gs_context_time_launches")
                    for i, stage in enumerate(["project", "backproject"]):
                        # eigenvectors once per launch; launch 1 reads x (twice: the range scan)
                        # and writes q; launch 2 reads q and x and writes out
                        lb = d * r * 2 + (2 * B * d * 2 + B * r * 2 if i == 0 else B * r * 2 + 2 * B * d * 2)
                        lf = 2 * B * d * r
                        lfloor = max(lb / bw, lf / tf) * 1e3
                        ms = lt.launch_ms[i]
                        lrow = dict(version=v, d=d, r=r, B=B, launch=stage, forced=list(sp), ms=ms, floor_ms=lfloor,
                                    blocks=lt.blocks[i], splits=lt.splits[i], bm=lt.block_rows[i],
                                    blocks_per_sm=lt.blocks_per_sm[i], waves=lt.waves[i],
                                    gbps=lb / (ms * 1e-3) / 1e9, tflops=lf / (ms * 1e-3) / 1e12)
                        res["launches"].append(lrow)
                        launch_rows.append(lrow)

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
                                                      Noise(1.0, ss), levels, 16,
                                                      torch.cuda.current_stream().cuda_stream),
                          "gs_skip_trajectory")

                t_traj = bench(trajectory)
                res["trajectory"].append(dict(d=d, r=r, B=B, ms=t_traj, skip_ms=row[f"{versions[-1]}_ms"]))
                del traj
            ours_text = ", ".join(f"{v} {row[v + '_ms']:.3f} ms (graph {row[v + '_graph_ms']:.3f})" for v in versions)
            print(f"  d={d} r={r} B={B}: {ours_text}, torch {t_torch:.3f} (graph {t_tgraph:.3f}), floor {floor:.3f}, "
                  f"relerr {max(row['relerr'].values()):.1e}", flush=True)
        for m, _ in models:
            lib.gs_model_free(m)
        del Us16, models
        torch.cuda.empty_cache()
    for c in ctxs.values():
        lib.gs_context_free(c)
    print_call_table(name, versions, call_rows)
    print_launch_table(sms, launch_rows)

    print("\ndenoise and 16-level trajectories (ms):")
    for w, t in zip(res["denoise"], res["trajectory"]):
        print(f"  d={w['d']} r={w['r']} B={w['B']}: denoise {w['ms']:.3f} (floor {w['floor_ms']:.3f}); "
              f"trajectory of 16 {t['ms']:.3f} = {t['ms'] / t['skip_ms']:.2f} skips")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_bench.json"), "w") as f:
            json.dump(res, f, indent=1)
    if FAILURES:
        print("\nFAILED:", *FAILURES, sep="\n  ")
        sys.exit(1)
    print("\nall results within the precision contract")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError:
        print("\nFAILED:", *FAILURES, sep="\n  ")
        sys.exit(1)
