"""A child created by fork() after the library's worker threads have started can use the
library (multiprocessing with the fork start method, DataLoader workers). The threads of the
parent's pool do not exist in the child; before the pool was kept per process, the child's
first parallel call waited for them forever."""

import multiprocessing as mp
import sys

import numpy as np
import pytest

import gaussskip as gs
from conftest import make_parts

# Large enough that the CPU path hands the work to its thread pool (2^21 multiply-adds).
DIM, RANK, BATCH = 256, 256, 32
TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(
    not hasattr(__import__("os"), "fork") or sys.platform == "darwin",
    reason="needs fork() (and macOS frameworks are not fork-safe)",
)


def _work(model, x, data):
    skipped = model.skip(x, 80.0, 19.4)
    denoised = model.denoise(x, 19.4)
    fitted = gs.fit(data, rank=8)
    return skipped, denoised, fitted.eigvals


def _child(conn, model, x, data):
    try:
        conn.send(("ok", _work(model, x, data)))
    except Exception as e:  # the parent reports it
        conn.send(("error", repr(e)))
    finally:
        conn.close()


def test_forked_child_uses_the_library_after_the_parent_started_its_threads():
    mean, vals, vecs, resid = make_parts(DIM, RANK, 0.0, seed=3)
    model = gs.Model.from_arrays(mean, vals, vecs, resid)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((BATCH, DIM)) * 80.0).astype(np.float32)
    data = rng.standard_normal((600, DIM))
    want = _work(model, x, data)  # starts the parent's pool

    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(child_end, model, x, data))
    child.start()
    child_end.close()
    if not parent_end.poll(TIMEOUT_S):
        child.kill()
        child.join()
        pytest.fail(f"the forked child did not finish within {TIMEOUT_S} s (deadlocked)")
    status, got = parent_end.recv()
    child.join(TIMEOUT_S)
    assert status == "ok", got
    assert child.exitcode == 0
    # The same library, the same inputs: the same bits.
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
