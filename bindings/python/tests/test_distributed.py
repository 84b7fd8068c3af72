"""gaussskip.distributed on gloo with 3 CPU processes (torch.multiprocessing spawn): the
combined state equals one process's over all the data, uneven shards and a rank without
data, the sketch's passes, and faults (NaN, a reader error, an exception, a rank that hangs)
raising on every rank instead of hanging.

Cost: two groups of processes, each importing torch: 3 for the scenarios (plus the 6 s of
the hanging rank), 2 for the example (which imports diffusers too). Measured on the shared
2-core machine under load (load average about 10): 41 s of CPU for the scenarios, 69 s for
the example; the data are tiny, process start-up is the cost.
"""

import importlib.util
import os
import pickle
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gaussskip as gs

torch = pytest.importorskip("torch", reason="gaussskip.distributed needs torch (GAUSSSKIP_PY_EXTRAS=torch)")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import gaussskip.distributed as gsd  # noqa: E402

WORLD = 3
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "distributed_fit_latents.py"


def data(n, d, seed):
    """Rows with a large common offset (a naive sum of squares would lose digits) and a
    decaying spectrum."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.75) @ q.T + 100.0 + rng.uniform(-1, 1, d)


X = data(301, 12, seed=5)
# Uneven shards, in batches of uneven sizes; rank 2 has none.
SHARDS = {0: [X[0:7], X[7:40]], 1: [X[40:41], X[41:200], X[200:301]], 2: []}
# For the sketch, rank 0 has none; items of shape (3, 4).
SKETCH_SHARDS = {0: [], 1: [X[0:150]], 2: [X[150:151], X[151:301]]}
SKETCH_SHARDS = {r: [b.reshape(-1, 3, 4) for b in bs] for r, bs in SKETCH_SHARDS.items()}


# Three classes; the rows of class 1 all lie on ranks 0 and 1.
LABELS = np.where(np.arange(301) < 200, np.arange(301) % 2, 2)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state(acc):
    """(count, mean, the scatter's image: m2 or Y) of an accumulator, float64."""
    if isinstance(acc, gs.Moments):
        return acc.count, acc.mean, acc.m2
    meta, tensors = gsd._read_image(acc.to_bytes())
    return int(meta["count"]), tensors["mean"].copy(), tensors["y"].copy()


def caught(fn, kind=None):
    t0 = time.monotonic()
    try:
        fn()
    except kind or gsd.RankFailedError as e:
        return {"error": str(e), "type": type(e).__name__, "ranks": getattr(e, "ranks", None), "seconds": time.monotonic() - t0}
    return {"error": None, "seconds": time.monotonic() - t0}


def nan_shard(r):
    bad = X[40:60].copy()
    bad[3, 2] = np.nan
    return [X[0:40], bad] if r == 1 else [X[60:80]]


def failing_reader(r):
    yield X[0:10]
    if r == 2:
        raise OSError("the shard's file vanished")
    yield X[10:20]


def scenarios(r):
    """Runs on rank r of a working group; returns what the test checks."""
    out = {}
    local = gs.Moments()
    for b in SHARDS[r]:
        local.update(b)
    out["moments"] = state(gsd.combine(local))
    out["exact_model"] = gsd.fit(SHARDS[r], method="exact", rank=5, residual="mean")

    sk = gs.Sketch(4, passes=2, seed=7)
    for b in SKETCH_SHARDS[r]:
        sk.update(b)
    out["sketch_pass1"] = state(gsd.combine(sk))
    out["sketch_model"] = gsd.fit(SKETCH_SHARDS[r], method="sketch", rank=4, passes=3, seed=7)

    out["nan"] = caught(lambda: gsd.fit(nan_shard(r), method="exact"))
    out["reader"] = caught(lambda: gsd.fit(failing_reader(r), method="exact"))

    def raising(r):
        for b in SHARDS[r]:
            yield b
        if r == 0:
            raise KeyError("no such column")

    out["exception"] = caught(lambda: gsd.fit(raising(r), method="exact"))
    # Every rank failed identically: the sketch is planned for more modes than the data has.
    out["everyone"] = caught(lambda: gsd.fit(SHARDS[r], method="sketch", rank=13, passes=1))
    # Errors every rank sees alike: sketches of different seeds (test matrices) do not add up,
    # and a one-shot iterator cannot be read by a multi-pass sketch.
    out["seeds"] = caught(lambda: gsd.combine(gs.Sketch(4, seed=r).update(X[r::3])), gs.InvalidArgumentError)
    out["one_shot"] = caught(lambda: gsd.fit(iter([X[r::3]]), method="sketch", rank=3), gs.InvalidArgumentError)
    # The group still works after the failures (all ranks stopped at the same step).
    out["after"] = gsd.fit([X[r::3]], method="exact")

    # Class-conditional: labels ride with the batches; rank 2 sees no class 1 at all.
    shard = {0: slice(0, 100), 1: slice(100, 230), 2: slice(230, 301)}[r]
    y = LABELS[shard]
    out["classes"] = gsd.fit([(X[shard][:50], y[:50]), (X[shard][50:], y[50:])], labels=True)

    # Last, as it breaks the group: a rank whose reader hangs.
    def slow(r):
        if r == 1:
            time.sleep(6)  # a reader stuck on a dead file system
        yield X[r::3]

    out["hang"] = caught(lambda: gsd.fit(slow(r), method="exact", timeout=2))
    return out


def worker(r, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=WORLD)
    out = scenarios(r)
    with open(os.path.join(outdir, f"rank{r}.pkl"), "wb") as f:
        pickle.dump(out, f)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """What each of the 3 ranks saw (one group of processes for every scenario: starting
    them, each importing torch, is most of the cost)."""
    import torch.multiprocessing as mp

    outdir = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(free_port(), str(outdir)), nprocs=WORLD, join=True)
    got = []
    for r in range(WORLD):
        with open(outdir / f"rank{r}.pkl", "rb") as f:
            got.append(pickle.load(f))
    return got


def test_combined_moments_equal_one_process_over_all_data(main_run):
    one = gs.Moments().update(X)
    for out in main_run:
        count, mean, m2 = out["moments"]
        assert count == len(X)
        assert rel(mean, one.mean) < 1e-10 and rel(m2, one.m2) < 1e-10, (rel(mean, one.mean), rel(m2, one.m2))
    # Every rank holds the very same state.
    for out in main_run[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(out["moments"][1:], main_run[0]["moments"][1:]))


def test_exact_fit_is_the_one_process_fit_on_every_rank(main_run):
    want = gs.fit(X, rank=5, residual="mean", method="exact")
    for out in main_run:
        m = out["exact_model"]
        assert m.metadata["sample_count"] == str(len(X))
        np.testing.assert_allclose(m.eigvals, want.eigvals, rtol=1e-10)
        assert m.residual_var == pytest.approx(want.residual_var, rel=1e-10)
        np.testing.assert_allclose(m.mean, want.mean, rtol=1e-6)
        # Eigenvectors up to float32 rounding and sign.
        assert np.abs(np.abs(np.sum(m.eigvecs * want.eigvecs, axis=1)) - 1).max() < 1e-5
        assert np.array_equal(m.eigvecs, main_run[0]["exact_model"].eigvecs)


def test_combined_sketch_pass_equals_one_process(main_run):
    one = gs.Sketch(4, passes=2, seed=7).update(X)
    count, mean, y = state(one)
    for out in main_run:
        c, m, yy = out["sketch_pass1"]
        assert c == count and rel(m, mean) < 1e-10 and rel(yy, y) < 1e-10, (rel(m, mean), rel(yy, y))


def test_multi_pass_sketch_fit_is_the_one_process_fit(main_run):
    want = gs.fit([X[0:150].reshape(-1, 3, 4), X[150:301].reshape(-1, 3, 4)], rank=4, method="sketch", passes=3, seed=7)
    for out in main_run:
        m = out["sketch_model"]
        assert m.metadata["fit_passes"] == "3" and m.metadata["sample_count"] == str(len(X))
        assert m.item_shape == (3, 4)
        np.testing.assert_allclose(m.eigvals, want.eigvals, rtol=1e-9)
        assert np.array_equal(m.eigvecs, main_run[0]["sketch_model"].eigvecs)


@pytest.mark.parametrize(
    "case, rank, words",
    [("nan", 1, ["NonFiniteError", "row 3"]), ("reader", 2, ["OSError", "vanished"]), ("exception", 0, ["KeyError", "no such column"])],
)
def test_a_failing_rank_makes_every_rank_raise_naming_it(main_run, case, rank, words):
    for out in main_run:
        got = out[case]
        assert got["error"] is not None, f"{case}: no error"
        assert got["ranks"] == (rank,)
        assert f"rank {rank} of 3 failed" in got["error"]
        for w in words:
            assert w in got["error"], got["error"]


def test_a_failure_on_every_rank_says_so(main_run):
    for out in main_run:
        assert out["everyone"]["ranks"] == (0, 1, 2)
        assert "every rank of 3 failed" in out["everyone"]["error"] and "rank" in out["everyone"]["error"]


def test_what_every_rank_sees_alike_raises_the_same_error_everywhere(main_run):
    for out in main_run:
        assert out["seeds"]["type"] == "InvalidArgumentError" and "test matrix" in out["seeds"]["error"]
        assert out["one_shot"]["type"] == "InvalidArgumentError" and "one-shot" in out["one_shot"]["error"]


def test_the_group_keeps_working_after_reported_failures(main_run):
    want = gs.fit(X, method="exact")
    for out in main_run:
        np.testing.assert_allclose(out["after"].eigvals, want.eigvals, rtol=1e-10)


def test_a_hanging_rank_stops_every_rank_after_the_timeout(main_run):
    for r in (0, 2):
        h = main_run[r]["hang"]
        assert h["error"] is not None and h["seconds"] < 20, h  # timeout=2: about 2 s
        assert "did not reach reading the first batch in time" in h["error"]
    # Rank 0 names the rank that did not arrive.
    assert main_run[0]["hang"]["ranks"] == (1,) and "rank 1 did not reach" in main_run[0]["hang"]["error"]
    # The hung rank itself fails once it wakes (the others have left).
    assert main_run[1]["hang"]["error"] is not None


def test_outside_a_process_group_and_labels_are_clear_errors():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(gs.InvalidArgumentError, match="init_process_group"):
        gsd.fit([X])
    with pytest.raises(gs.InvalidArgumentError, match="init_process_group"):
        gsd.fit([(X, LABELS)], labels=True)


def test_class_conditional_fit_is_the_one_process_fit_on_every_rank(main_run):
    one = gs.fit(X, labels=LABELS)
    for r in range(WORLD):
        got = main_run[r]["classes"]
        assert got.labels == one.labels == ["0", "1", "2"] and got.counts == one.counts
        for k in range(3):
            assert rel(got.component(k).eigvals, one.component(k).eigvals) <= 1e-10
            assert rel(got.component(k).mean, one.component(k).mean) <= 1e-6


def test_the_distributed_latent_example_runs(tmp_path):
    missing = [m for m in ("diffusers",) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the example encodes with a diffusers AutoencoderKL: needs {', '.join(missing)} (GAUSSSKIP_PY_EXTRAS)")
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(gs.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tiny", "--out", str(tmp_path / "latents.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("OK"), r.stdout
    assert gs.Model.load(tmp_path / "latents.safetensors").item_shape == (4, 4, 4)
