"""The CPU path against the same formula in NumPy, f32, in one run: the ours/NumPy table.

    cargo build --release
    pip install numpy ./bindings/python
    GAUSSSKIP_LIB=$PWD/target/release/libgaussskip.so python scripts/cpu_bench.py [--repeat N]

For each shape (dim d, rank r, batch B) it times the EDM skip 80 -> 19.4 through the Python
package (`model.skip(x, 80, 19.4, out=out)`, one C call) and
`mu + b*y + ((y @ U^T) * w) @ U` in NumPy (OpenBLAS), alternating them, and prints the best
time of each, their ratio (below 1: ours is faster), our GB/s over the eigenvectors it must
read twice, and our relative error against float64. Threads: the library uses one per core
(RAYON_NUM_THREADS), NumPy its BLAS default (OPENBLAS_NUM_THREADS); leave both unset to
compare the defaults. Run it on an otherwise idle machine. Each timed round follows a pause
and 0.1 s of untimed calls of the same side (`--settle`): idle BLAS threads that still spin from the
other side's call would otherwise be timed as ours, and ours as NumPy's.

On a shared machine, wall times swing with the other processes and penalise whichever side
waits for a descheduled thread. `--cpu-time` times the process's CPU time instead, a steadier
measure of the arithmetic alone; it needs one thread on each side
(RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1), since idle threads that spin also count.
"""
import argparse
import os
import sys
import time

import numpy as np

import gaussskip as gs

SHAPES = [(784, 784), (3072, 3072), (3072, 768), (12288, 1024)]
BATCHES = (1, 16, 64, 256)
SIGMA_FROM, SIGMA_TO = 80.0, 19.4


def random_model(rng, d, r):
    u = np.linalg.qr(rng.standard_normal((d, r)))[0].T.astype(np.float32)
    lam = np.sort(rng.random(r) * 10.0)[::-1].astype(np.float64)
    mu = (rng.standard_normal(d) * 0.1).astype(np.float32)
    return mu, lam, u


def numpy_skip(x, mu, u, ut, lam, s0, s1):
    """SPEC §4 skip with residual variance 0, in the dtype of x."""
    y = x - mu
    g = np.sqrt((lam + s1 * s1) / (lam + s0 * s0)).astype(x.dtype)
    b = x.dtype.type(s1 / s0)
    p = y @ ut
    p *= g - b
    return mu + b * y + p @ u


def best_of(f, calls, clock):
    """The fastest of `calls` calls, each timed alone: on a shared machine a call is slowed
    by other processes and never sped up, so the minimum is the steadiest estimate of each
    side's own time."""
    best = float("inf")
    for _ in range(calls):
        t = clock()
        f()
        best = min(best, clock() - t)
    return best


def settled(f, calls, clock, pause, warm=0.1):
    """One timed round of `f` after a pause and `warm` seconds of untimed calls. OpenBLAS's
    threads spin for a while after each call (rayon's briefly), and on a machine with as many
    cores as threads they would slow down the other side's next call (by 1.5-2x at these
    sizes): hence the pause. But a core that was idle runs slowly for a few tens of
    milliseconds (measured on the 2-core test machine: calls of 2.3 ms took 5-9 ms for the
    first 40 ms after a 0.3 s pause): hence the warm-up, long enough for either side."""
    time.sleep(pause)
    end = time.perf_counter() + warm
    f()
    while time.perf_counter() < end:
        f()
    return best_of(f, calls, clock)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timing rounds per side (best counts)")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of pause before each timed round (idle threads stop spinning)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time CPU seconds, not wall seconds (one thread on each side)")
    ap.add_argument("--shapes", default=",".join(f"{d}x{r}" for d, r in SHAPES),
                    help="models to time, as dim x rank (default: %(default)s)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)),
                    help="batch sizes to time (default: %(default)s)")
    args = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        sys.exit(f"--shapes takes DxR[,DxR...] and --batches B[,B...], got {args.shapes!r}, "
                 f"{args.batches!r}")
    if any(len(s) != 2 or not 0 < s[1] <= s[0] for s in shapes) or min(batches) < 1:
        sys.exit("each shape needs 0 < rank <= dim, each batch at least 1")
    clock = time.perf_counter
    if args.cpu_time:
        threads = {v: os.environ.get(v) for v in ("RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        if any(n != "1" for n in threads.values()):
            sys.exit(f"--cpu-time needs RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, got {threads}")
        clock = time.process_time
    rng = np.random.default_rng(0)
    print(f"{'d':>6} {'r':>6} {'B':>4}  {'ours_ms':>8} {'numpy_ms':>9} {'ours/numpy':>10} "
          f"{'ours_GB/s':>9}  relerr")
    for d, r in shapes:
        mu, lam, u = random_model(rng, d, r)
        ut = np.ascontiguousarray(u.T)
        model = gs.Model.from_arrays(mu, lam, u, 0.0)
        for batch in batches:
            x = (rng.standard_normal((batch, d)) * SIGMA_FROM).astype(np.float32)
            out = np.empty_like(x)
            ours = lambda: model.skip(x, SIGMA_FROM, SIGMA_TO, out=out)  # noqa: E731
            theirs = lambda: numpy_skip(x, mu, u, ut, lam, SIGMA_FROM, SIGMA_TO)  # noqa: E731
            ours(), theirs()
            calls = max(1, min(50, int(2e8 / (batch * d * r + 1))))
            t_ours, t_np = float("inf"), float("inf")
            for _ in range(args.repeat):  # alternate, so both see the same machine
                t_ours = min(t_ours, settled(ours, calls, clock, args.settle))
                t_np = min(t_np, settled(theirs, calls, clock, args.settle))
            ref = numpy_skip(x.astype(np.float64), mu.astype(np.float64), u.astype(np.float64),
                             ut.astype(np.float64), lam, SIGMA_FROM, SIGMA_TO)
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            gbs = 2 * u.nbytes / t_ours / 1e9
            print(f"{d:6d} {r:6d} {batch:4d}  {t_ours * 1e3:8.3f} {t_np * 1e3:9.3f} "
                  f"{t_ours / t_np:10.2f} {gbs:9.1f}  {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
