#!/usr/bin/env python3
"""The low-rank sketch at latent scale: peak memory and time, and speed against scikit-learn
and PyTorch at equal accuracy.

    python scripts/sketch_bench.py scale   [--shape 4,128,128] [--items 2000] [--ranks 128,256,512]
    python scripts/sketch_bench.py compare [--shape 4,64,64] [--items 4000] [--rank 128] [--device cpu|cuda]

Data: synthetic "latents" with the spectrum of natural images: white noise filtered to a
power spectrum ~ 1/(f^2 + f0^2) per channel, channels mixed by a fixed random matrix, plus a
mean. Its covariance spectrum decays slowly, like real VAE latents.

`scale` writes the items to an .npy file (float32) and runs `gaussskip fit --rank R` on it
without --method, so the tool itself chooses the sketch (the dim x dim matrices would need
more memory than the machine has), with its default passes. It reports each run's wall and
CPU time (user + system, all threads) and peak resident memory (the child's ru_maxrss) next to 16 x dim x width bytes (the two
dim x width f64 matrices the sketch keeps), and the fit's captured-variance estimate. It
needs a release build (`cargo build --release`) and NumPy.

`compare` holds the items in memory (both libraries need that; the sketch does not) and
fits the top `rank` eigenpairs with the sketch (the Python package, default oversampling,
passes 1..8), `sklearn.decomposition.PCA(svd_solver="randomized")` (iterated_power 0..8,
n_oversamples = rank) and `torch.svd_lowrank` (q = 2 x rank, niter 0..8), on float32 data
(their usual precision) or float64 (`--their-dtype`, the sketch's). The exact
eigenvalues come from the items' Gram matrix (items < dim). For each method it takes the
cheapest setting whose worst top-rank eigenvalue error is within 1 % and whose subspace
captures at least 99.9 % of the exact top-rank variance, and prints the time ratio
ours / theirs at that accuracy: CPU time of all threads by default (on a machine shared with
other work, wall time mostly measures the others), wall time with --device cuda. With --device cuda the sketch runs through cuBLAS on
CUDA tensors and torch on the GPU (scikit-learn stays on the CPU).
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def latents(n, shape, seed=0, chunk=256):
    """Yields batches of synthetic latents, float32, shape (b, C, H, W)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.sqrt(fy**2 + fx**2 + (2.0 / max(h, w)) ** 2)
    amp /= np.sqrt((amp**2).mean())
    mix = rng.standard_normal((c, c)) / np.sqrt(c) + np.eye(c)
    mean = rng.uniform(-0.5, 0.5, (c, 1, 1))
    done = 0
    while done < n:
        b = min(chunk, n - done)
        noise = rng.standard_normal((b, c, h, w))
        field = np.fft.irfft2(np.fft.rfft2(noise) * amp, s=(h, w))
        yield (np.einsum("ij,bjhw->bihw", mix, field) + mean).astype(np.float32)
        done += b


def write_npy(path, n, shape):
    partial = path.with_name(path.name + ".partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, *shape))
    at = 0
    for batch in latents(n, shape):
        out[at : at + len(batch)] = batch
        at += len(batch)
    out.flush()
    del out
    partial.rename(path)  # an interrupted write is never taken for the data


def run_measured(cmd):
    """Runs cmd; returns (wall seconds, CPU seconds (user + system), peak RSS bytes of that
    process, stdout, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        out_text, err_text = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err_text}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out_text, err_text


def scale(args):
    shape = tuple(int(s) for s in args.shape.split(","))
    dim = int(np.prod(shape))
    exe = ROOT / "target" / "release" / "gaussskip"
    if not exe.exists():
        sys.exit("build first: cargo build --release")
    work = Path(args.work or tempfile.mkdtemp(prefix="gaussskip-scale-"))
    data = work / f"latents_{args.items}x{'x'.join(map(str, shape))}.npy"
    if not data.exists():
        t = time.perf_counter()
        # In a fresh interpreter: Linux starts a child's peak RSS (ru_maxrss) at the peak of
        # the process it was spawned from, so this process must stay small.
        writer = multiprocessing.get_context("spawn").Process(target=write_npy, args=(data, args.items, shape))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            sys.exit(f"writing {data} failed")
        print(f"wrote {data} ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
    print(f"dim {dim}, {args.items} items streamed from {data.name}; machine: {os.cpu_count()} cores")
    print(f"{'rank':>5} {'width':>6} {'passes':>6} {'wall s':>8} {'CPU s':>8} {'peak RSS':>10} {'16 d k':>9} {'RSS/16dk':>8}  captured est.")
    for rank in (int(r) for r in args.ranks.split(",")):
        model = work / f"sketch_r{rank}.safetensors"
        cmd = [str(exe), "fit", str(data), "-o", str(model), "--rank", str(rank), "--no-progress"]
        wall, cpu, peak, out, err = run_measured(cmd)
        if "method: sketch" not in out:
            sys.exit(f"expected the tool to choose the sketch:\n{out}")
        info = json.loads(subprocess.run([str(exe), "info", str(model), "--json"], capture_output=True, text=True, check=True).stdout)
        fit = info["fit"]
        width = fit["sketch_width"]
        kept = 16 * dim * width
        print(
            f"{rank:>5} {width:>6} {fit['passes']:>6} {wall:>8.1f} {cpu:>8.1f} {peak / 2**30:>8.2f} GiB {kept / 2**30:>6.2f} GiB "
            f"{peak / kept:>8.2f}  {100 * fit['captured_estimate']:.4f}%"
        )
    print(f"(the exact fit would need {32 * dim * dim / 2**30:.0f} GiB: {dim}x{dim} f64 matrices)")


def exact_top(x, rank):
    """Exact top eigenvalues of the covariance (through the Gram matrix) and the centred
    items."""
    xc = x - x.mean(axis=0)
    vals = np.linalg.eigvalsh(xc @ xc.T)
    return np.sort(vals)[::-1][:rank] / (len(x) - 1), xc


def quality(vals, vecs, exact_vals, xc):
    """Worst relative eigenvalue error and captured fraction of the exact top variance."""
    err = float(np.max(np.abs(vals - exact_vals) / exact_vals))
    proj = xc @ vecs
    captured = float((proj**2).sum() / (len(xc) - 1) / exact_vals.sum())
    return err, captured


def compare(args):
    import gaussskip as gs

    shape = tuple(int(s) for s in args.shape.split(","))
    dim = int(np.prod(shape))
    rank = args.rank
    x = np.concatenate(list(latents(args.items, shape))).reshape(args.items, dim)
    t = time.perf_counter()
    exact_vals, xc = exact_top(x.astype(np.float64), rank)
    print(
        f"dim {dim}, {args.items} items, rank {rank}, theirs in {args.their_dtype}; "
        f"exact top eigenvalues via the Gram matrix in {time.perf_counter() - t:.1f} s"
    )
    ok = lambda e, c: e <= 0.01 and c >= 0.999  # noqa: E731
    results = {}

    def timed(fn):
        """Best (wall, CPU) seconds over the repeats; CPU time (all threads of this process)
        is the steadier measure on a shared machine."""
        best = None
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            dt = (time.perf_counter() - t, time.process_time() - c)
            best = dt if best is None else min(best, dt)
        return best, out

    def sweep(name, settings, fn):
        for setting in settings:
            (wall, cpu), (vals, vecs) = timed(lambda: fn(setting))
            err, cap = quality(np.asarray(vals[:rank], np.float64), np.asarray(vecs[:, :rank], np.float64), exact_vals, xc)
            print(f"  {name:<28} {setting:<18} {wall:7.2f} s wall {cpu:7.2f} s CPU  eigval err {err:.2e}  captured {100 * cap:.5f}%")
            dt = cpu if args.clock == "cpu" else wall
            if ok(err, cap):
                results[name] = (dt, setting)
                return
        print(f"  {name}: no setting reached the accuracy")

    cuda = args.device == "cuda"
    if cuda:
        import torch

        xt = torch.from_numpy(x).cuda()
        batches = [xt[i : i + 512] for i in range(0, len(x), 512)]
    else:
        batches = [x[i : i + 512] for i in range(0, len(x), 512)]

    def ours(passes):
        m = gs.fit(batches, rank=rank, method="sketch", passes=passes, device="cuda" if cuda else None)
        return m.eigvals, m.eigvecs.T

    sweep("gaussskip sketch" + (" (cuBLAS)" if cuda else ""), [f"passes={p}" for p in range(1, 9)], lambda s: ours(int(s.split("=")[1])))

    try:
        from sklearn.decomposition import PCA

        xs = x.astype(args.their_dtype)

        def skl(setting):
            q = int(setting.split("=")[1])
            p = PCA(n_components=rank, svd_solver="randomized", iterated_power=q, n_oversamples=rank, random_state=0).fit(xs)
            return p.explained_variance_, p.components_.T

        sweep("sklearn PCA randomized", [f"iterated_power={q}" for q in range(0, 9)], skl)
    except ImportError:
        print("  scikit-learn is not installed: skipped")

    try:
        import torch

        torch.manual_seed(0)
        a = torch.from_numpy(x.astype(args.their_dtype))
        if cuda:
            a = a.cuda()
        mean = a.mean(dim=0, keepdim=True)

        def tsvd(setting):
            it = int(setting.split("=")[1])
            u, s, v = torch.svd_lowrank(a, q=2 * rank, niter=it, M=mean)
            if cuda:
                torch.cuda.synchronize()
            return (s**2 / (len(x) - 1)).cpu().double().numpy(), v.cpu().double().numpy()

        sweep("torch.svd_lowrank" + (" (cuda)" if cuda else ""), [f"niter={i}" for i in range(0, 9)], tsvd)
    except ImportError:
        print("  PyTorch is not installed: skipped")

    ours_key = next((k for k in results if k.startswith("gaussskip")), None)
    print(f"at equal accuracy (worst top-rank eigenvalue within 1 %, captured >= 99.9 %), {args.clock} time:")
    for name, (dt, setting) in results.items():
        ratio = "" if ours_key is None or name == ours_key else f"   ours/theirs = {results[ours_key][0] / dt:.2f}"
        print(f"  {name:<28} {setting:<18} {dt:8.2f} s{ratio}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--shape", default="4,128,128")
    s.add_argument("--items", type=int, default=2000)
    s.add_argument("--ranks", default="128,256,512")
    s.add_argument("--work", help="folder for the data and models (default: a new temporary folder)")
    c = sub.add_parser("compare")
    c.add_argument("--shape", default="4,64,64")
    c.add_argument("--items", type=int, default=4000)
    c.add_argument("--rank", type=int, default=128)
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    c.add_argument("--repeat", type=int, default=1)
    c.add_argument("--their-dtype", choices=["float32", "float64"], default="float32", help="precision of scikit-learn's and torch's data and arithmetic (the sketch computes in float64)")
    c.add_argument("--clock", choices=["cpu", "wall"], help="time for the ratio (default: CPU time, steadier on a shared machine; wall time with --device cuda)")
    args = ap.parse_args()
    if args.mode == "compare" and args.clock is None:
        args.clock = "wall" if args.device == "cuda" else "cpu"
    scale(args) if args.mode == "scale" else compare(args)


if __name__ == "__main__":
    main()
