"""Per-call overhead of the Python bindings: the time a call spends in Python around the C
call, measured on a tiny model (dim 16, rank 4) where the computation itself is negligible.

Run from the repository root after ``cargo build --release``::

    GAUSSSKIP_LIB=$PWD/target/release/libgaussskip.so PYTHONPATH=bindings/python \\
        python scripts/py_overhead.py [--rounds 7] [--calls 20000]

(or without the variables, against an installed wheel). Each line is the best of the rounds,
in µs per call; "overhead" is the line minus the raw ctypes call it wraps (the same C
function, arguments prepared once outside the loop). PyTorch lines appear when torch is
installed. The cases take turns within each round, so that a busy spell of the machine hits
all of them alike; on a shared machine, compare overheads from one run.
"""

import argparse
import time

import numpy as np

import gaussskip as gs
from gaussskip import _lib
from gaussskip._context import context

DIM, RANK, ROWS = 16, 4, 4


def best_us(fns, calls: int, rounds: int):
    """Best per-call time of each function over the rounds, in µs (after a warm-up)."""
    for fn in fns:
        for _ in range(min(calls, 1000)):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls)
    return [b * 1e6 for b in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    vecs = np.linalg.qr(rng.standard_normal((DIM, RANK)))[0].T
    model = gs.Model.from_arrays(rng.standard_normal(DIM), np.linspace(2.0, 0.5, RANK), vecs, 0.1)
    lib, ctx, handle = _lib.load(), context(_lib.GS_DEVICE_CPU).handle, model._handle

    x1 = rng.standard_normal((1, DIM)).astype(np.float32)
    o1 = np.empty_like(x1)
    xr = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    orr = np.empty_like(xr)
    frm_rows = np.full(ROWS, 80.0)
    to_rows = np.linspace(19.4, 10.0, ROWS)

    f, t = _lib.GsNoise(1.0, 80.0), _lib.GsNoise(1.0, 19.4)
    fr = (_lib.GsNoise * ROWS)(*[_lib.GsNoise(1.0, float(s)) for s in frm_rows])
    tr = (_lib.GsNoise * ROWS)(*[_lib.GsNoise(1.0, float(s)) for s in to_rows])
    p_x1, p_o1, p_xr, p_or = x1.ctypes.data, o1.ctypes.data, xr.ctypes.data, orr.ctypes.data
    f32 = _lib.GS_DTYPE_F32
    n80, n19 = gs.edm(80.0), gs.edm(19.4)

    raw_skip = lambda: lib.gs_skip(ctx, handle, f32, p_x1, p_o1, 1, f, t, None)  # noqa: E731
    raw_denoise = lambda: lib.gs_denoise(ctx, handle, f32, p_x1, p_o1, 1, t, None)  # noqa: E731
    raw_rows = lambda: lib.gs_skip_rows(ctx, handle, f32, p_xr, p_or, ROWS, fr, tr, None)  # noqa: E731

    cases = [
        ("raw gs_skip (ctypes), B=1", raw_skip, None),
        ("skip(x, 80, 19.4, out=out), B=1", lambda: model.skip(x1, 80.0, 19.4, out=o1), "raw gs_skip"),
        ("skip(x, 80, 19.4), B=1", lambda: model.skip(x1, 80.0, 19.4), "raw gs_skip"),
        ("skip(x, Noise, Noise, out=out), B=1", lambda: model.skip(x1, n80, n19, out=o1), "raw gs_skip"),
        ("raw gs_denoise (ctypes), B=1", raw_denoise, None),
        ("denoise(x, 19.4, out=out), B=1", lambda: model.denoise(x1, 19.4, out=o1), "raw gs_denoise"),
        (f"raw gs_skip_rows (ctypes), B={ROWS}", raw_rows, None),
        (f"skip(x, rows, rows, out=out), B={ROWS}", lambda: model.skip(xr, frm_rows, to_rows, out=orr), "raw gs_skip_rows"),
    ]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tx, to_ = torch.from_numpy(x1.copy()), torch.empty(1, DIM)
        cases += [
            ("torch skip(x, 80, 19.4, out=out), B=1", lambda: model.skip(tx, 80.0, 19.4, out=to_), "raw gs_skip"),
            ("torch skip(x, 80, 19.4), B=1", lambda: model.skip(tx, 80.0, 19.4), "raw gs_skip"),
        ]

    print(f"model dim {DIM}, rank {RANK}; best of {args.rounds} rounds x {args.calls} calls; µs per call")
    raw = {}
    times = best_us([fn for _, fn, _ in cases], args.calls, args.rounds)
    for (name, _, base), us in zip(cases, times):
        if base is None:
            raw[name.split(" (")[0]] = us
            print(f"  {name:42s} {us:8.2f}")
        else:
            print(f"  {name:42s} {us:8.2f}   overhead {us - raw[base]:7.2f}")


if __name__ == "__main__":
    main()
