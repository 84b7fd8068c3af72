"""Fitting through the library: moments and the low-rank sketch, batches of every shape a
DataLoader yields, exported state, metadata, and errors."""

import pickle

import numpy as np
import pytest

import gaussskip as gs


def data(n, d, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(2.0, 0.05, d)
    return rng.standard_normal((n, d)) @ mix.T + offset + rng.uniform(-1, 1, d)


def decaying(n, d, seed):
    """Items with variances k^-1.5 along random directions (a clear top of the spectrum)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sd = np.arange(1, d + 1) ** -0.75
    return (rng.standard_normal((n, d)) * sd) @ q.T + 3.0


def test_merge_of_shards_equals_single_pass_and_numpy():
    # A large common offset: a naive sum-of-squares accumulation would lose most digits.
    x = data(1000, 9, seed=1, offset=1e4)
    one = gs.Moments().update(x)
    shards = [gs.Moments().update(x[a:b]) for a, b in [(0, 1), (1, 250), (250, 251), (251, 700), (700, 1000)]]
    merged = gs.Moments()
    for s in shards[::-1]:
        merged.merge(s)
    assert merged.count == one.count == 1000
    np.testing.assert_allclose(merged.mean, one.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.m2, one.m2, rtol=1e-9, atol=1e-9 * np.abs(one.m2).max())
    np.testing.assert_allclose(merged.covariance(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)


def test_streamed_batches_equal_one_batch():
    x = data(300, 6, seed=2)
    streamed = gs.Moments()
    for i in range(0, 300, 37):
        streamed.update(x[i : i + 37])
    np.testing.assert_allclose(streamed.covariance(), gs.Moments().update(x).covariance(), rtol=1e-12, atol=1e-14)


def test_fit_full_and_truncated():
    x = data(2000, 8, seed=3)
    cov = np.cov(x, rowvar=False)
    want = np.sort(np.linalg.eigvalsh(cov))[::-1]
    m = gs.fit(x)
    assert (m.dim, m.rank) == (8, 8)
    np.testing.assert_allclose(m.eigvals, want, rtol=1e-10)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-6)
    u = m.eigvecs.astype(np.float64)
    np.testing.assert_allclose(u.T @ np.diag(m.eigvals) @ u, cov, atol=1e-5 * np.abs(cov).max())
    assert m.metadata["sample_count"] == "2000" and m.item_shape == (8,)
    assert m.metadata["fit_method"] == "exact"

    low = gs.Moments().update(x).fit(rank=3, residual="mean")
    assert low.rank == 3
    assert low.residual_var == pytest.approx(want[3:].mean(), rel=1e-12)
    assert gs.fit(x, rank=3).residual_var == 0.0
    by_fraction = gs.fit(x, explained=0.9)
    k = int(np.searchsorted(np.cumsum(want) / want.sum(), 0.9) + 1)
    assert by_fraction.rank == k


def test_float32_and_integer_batches():
    x = data(500, 5, seed=8)
    f32 = gs.fit(x.astype(np.float32))
    f64 = gs.fit(x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(f32.eigvals, f64.eigvals, rtol=1e-12)
    pixels = np.random.default_rng(0).integers(0, 256, (300, 2, 3), dtype=np.uint8)
    m = gs.fit(pixels)
    np.testing.assert_allclose(m.eigvals, np.sort(np.linalg.eigvalsh(np.cov(pixels.reshape(300, -1).T)))[::-1], rtol=1e-9)
    assert m.item_shape == (2, 3)


def test_fit_from_iterator_and_item_shape():
    x = data(500, 12, seed=4).reshape(500, 3, 2, 2)
    from_iter = gs.fit((x[i : i + 64] for i in range(0, 500, 64)), rank=5)
    from_array = gs.fit(x, rank=5)
    np.testing.assert_allclose(from_iter.eigvals, from_array.eigvals, rtol=1e-10)
    assert from_iter.item_shape == (3, 2, 2)
    # The fitted model is usable: denoising the mean at any level gives the mean.
    mean = from_iter.mean.reshape(3, 2, 2)
    np.testing.assert_allclose(from_iter.denoise(mean, 3.0), mean, atol=1e-5)


def test_batches_of_labelled_tuples_and_dicts():
    x = data(400, 6, seed=6).reshape(400, 2, 3)
    y = np.arange(400) % 10
    want = gs.fit(x, rank=4)
    tuples = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 400, 50)]
    lists = [[x[i : i + 50], y[i : i + 50]] for i in range(0, 400, 50)]
    dicts = [{"label": y[i : i + 50], "image": x[i : i + 50]} for i in range(0, 400, 50)]
    custom = [{"label": y[i : i + 50], "z": x[i : i + 50]} for i in range(0, 400, 50)]
    for batches, key in [(tuples, None), (lists, None), (dicts, None), (custom, "z")]:
        got = gs.fit(batches, rank=4, key=key)
        np.testing.assert_allclose(got.eigvals, want.eigvals, rtol=1e-10)
        assert got.item_shape == (2, 3)
    with pytest.raises(gs.InvalidArgumentError, match="key="):
        gs.fit(custom, rank=4)
    with pytest.raises(gs.InvalidArgumentError, match="has no 'w'"):
        gs.fit(custom, rank=4, key="w")


def test_sketch_matches_the_exact_fit():
    x = decaying(3000, 120, seed=7)
    exact = gs.fit(x, rank=10)
    sk = gs.fit(x, rank=10, method="sketch", residual="mean")
    np.testing.assert_allclose(sk.eigvals, exact.eigvals, rtol=1e-2)
    u, v = sk.eigvecs.astype(np.float64), exact.eigvecs.astype(np.float64)
    cov = np.cov(x, rowvar=False)
    captured = np.trace(u @ cov @ u.T) / exact.eigvals.sum()
    assert captured > 0.999
    total = np.trace(cov)
    assert sk.residual_var == pytest.approx((total - sk.eigvals.sum()) / (120 - 10), rel=1e-9)
    meta = sk.metadata
    assert meta["fit_method"] == "sketch" and meta["fit_passes"] == "5" and meta["fit_sketch_width"] == "20"
    assert float(meta["fit_captured_estimate"]) <= captured + 1e-9
    assert float(meta["fit_explained"]) == pytest.approx(sk.eigvals.sum() / total, rel=1e-9)
    assert np.abs((u @ v.T) ** 2).sum() > 10 - 1e-2


def test_sketch_passes_shards_and_state():
    x = decaying(900, 40, seed=9).astype(np.float32)
    one = gs.Sketch(rank=5, passes=2, seed=3)
    for p in range(2):
        if p:
            one.next_pass()
        one.update(x)
    assert (one.pass_index, one.passes, one.count, one.width, one.dim) == (2, 2, 900, 15, 40)
    want = one.fit()

    coord = gs.Sketch(rank=5, passes=2, seed=3)
    coord.update(x[:1])
    for a, b in [(1, 400), (400, 900)]:
        coord.merge(coord.empty_like().update(x[a:b]))
    coord.next_pass()
    state = coord.to_bytes()
    for a, b in [(0, 450), (450, 900)]:
        worker = gs.Sketch.from_bytes(state)
        worker.update(x[a:b])
        coord.merge(pickle.loads(pickle.dumps(worker)))
    got = coord.fit(residual="mean")
    np.testing.assert_allclose(got.eigvals, want.eigvals, rtol=1e-10)
    assert got.metadata["sample_count"] == "900"
    assert coord.fit(rank=2).rank == 2

    with pytest.raises(gs.InvalidArgumentError, match="last of 2"):
        coord.next_pass()
    early = gs.Sketch(rank=5, passes=3).update(x)
    with pytest.raises(gs.InvalidArgumentError, match="pass 1 of 3"):
        early.fit()
    other = early.empty_like().update(x + 1.0)
    early.next_pass()
    with pytest.raises(gs.InvalidArgumentError):
        early.merge(other)
    changed = gs.Sketch(rank=5, passes=2).update(x)
    changed.next_pass()
    changed.update(x[:-1])
    with pytest.raises(gs.DatasetError, match="different data"):
        changed.fit()
    with pytest.raises(gs.FileFormatError):
        gs.Sketch.from_bytes(state[:100])


def test_moments_state_round_trips():
    x = data(200, 4, seed=10).reshape(200, 2, 2)
    m = gs.Moments().update(x)
    back = gs.Moments.from_bytes(m.to_bytes(), item_shape=(2, 2))
    np.testing.assert_array_equal(back.m2, m.m2)
    assert back.count == 200 and back.item_shape == (2, 2)
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.mean, m.mean)
    assert again.fit().item_shape == (2, 2)
    with pytest.raises(gs.FileFormatError):
        gs.Moments.from_bytes(b"junk")


def test_one_shot_iterators_and_the_sketch():
    x = decaying(300, 20, seed=11)
    gen = (x[i : i + 30] for i in range(0, 300, 30))
    with pytest.raises(gs.InvalidArgumentError, match="read only once"):
        gs.fit(gen, rank=3, method="sketch")
    once = gs.fit((x[i : i + 30] for i in range(0, 300, 30)), rank=3, method="sketch", passes=1)
    assert once.metadata["fit_passes"] == "1" and "fit_captured_estimate" not in once.metadata
    lists = gs.fit([x[i : i + 30] for i in range(0, 300, 30)], rank=3, method="sketch", passes=3)
    assert lists.metadata["fit_passes"] == "3"


def test_fit_errors():
    with pytest.raises(gs.DatasetError, match="at least 2"):
        gs.Moments().update(np.ones((1, 3))).fit()
    with pytest.raises(gs.ShapeMismatchError, match="shape"):
        gs.Moments().update(np.ones((2, 3))).update(np.ones((2, 4)))
    bad = np.ones((3, 3))
    bad[1, 2] = np.nan
    m = gs.Moments().update(np.zeros((2, 3)))
    with pytest.raises(gs.NonFiniteError, match="row 1"):
        m.update(bad)
    assert m.count == 2
    with pytest.raises(gs.NonFiniteError, match="row 1"):
        gs.Sketch(rank=1).update(bad)
    with pytest.raises(gs.DatasetError, match="no rows"):
        gs.fit(iter([]))
    with pytest.raises(gs.InvalidArgumentError, match="rank"):
        gs.fit(data(10, 3, seed=5), rank=4)
    with pytest.raises(gs.InvalidArgumentError, match="rank"):
        gs.fit(data(10, 3, seed=5), method="sketch")
    with pytest.raises(gs.InvalidArgumentError, match="method"):
        gs.fit(data(10, 3, seed=5), method="svd")
    with pytest.raises(gs.InvalidArgumentError, match="not both"):
        gs.fit(data(10, 3, seed=5), rank=2, explained=0.5)
    with pytest.raises(gs.InvalidArgumentError, match="residual"):
        gs.fit(data(10, 3, seed=5), residual="half")
    with pytest.raises(gs.UnsupportedDtypeError):
        gs.Moments().update(np.array([["a", "b"]]))
    with pytest.raises(gs.InvalidArgumentError, match="device"):
        gs.Sketch(rank=2, device="tpu")
    # A CUDA device that is not there (or a build without CUDA) says so.
    try:
        gs.fit(data(10, 3, seed=5), rank=2, method="sketch", device="cuda")
    except gs.NoCudaError as e:
        assert "CUDA" in str(e) or "cuBLAS" in str(e)


def test_torch_batches_and_dataloaders():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.tensor(decaying(256, 12, seed=12), dtype=torch.float32).reshape(256, 3, 4)
    y = torch.arange(256) % 10
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    want = gs.fit(x.numpy(), rank=4)
    for method in ("exact", "sketch"):
        got = gs.fit(loader, rank=4, method=method, passes=6)
        np.testing.assert_allclose(got.eigvals, want.eigvals, rtol=1e-2 if method == "sketch" else 1e-10)
        assert got.item_shape == (3, 4)
    bf = gs.fit(x.to(torch.bfloat16), rank=2)
    assert bf.rank == 2
    if torch.cuda.is_available():
        dev = x.cuda()
        try:
            on_gpu = gs.fit([dev[i : i + 32] for i in range(0, 256, 32)], rank=4, method="sketch", passes=6, seed=1)
        except gs.NoCudaError as e:
            pytest.skip(f"no cuBLAS for the sketch: {e}")
        on_cpu = gs.fit([x[i : i + 32] for i in range(0, 256, 32)], rank=4, method="sketch", passes=6, seed=1, device="cpu")
        np.testing.assert_allclose(on_gpu.eigvals, on_cpu.eigvals, rtol=1e-9)
