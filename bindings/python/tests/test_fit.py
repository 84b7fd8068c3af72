"""Streaming moments and fitting (pure NumPy, float64)."""

import numpy as np
import pytest

import gaussskip as gs


def data(n, d, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(2.0, 0.05, d)
    return rng.standard_normal((n, d)) @ mix.T + offset + rng.uniform(-1, 1, d)


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

    low = gs.Moments().update(x).fit(rank=3, residual="mean")
    assert low.rank == 3
    assert low.residual_var == pytest.approx(want[3:].mean(), rel=1e-12)
    assert gs.fit(x, rank=3).residual_var == 0.0


def test_fit_from_iterator_and_item_shape():
    x = data(500, 12, seed=4).reshape(500, 3, 2, 2)
    from_iter = gs.fit((x[i : i + 64] for i in range(0, 500, 64)), rank=5)
    from_array = gs.fit(x, rank=5)
    np.testing.assert_allclose(from_iter.eigvals, from_array.eigvals, rtol=1e-10)
    assert from_iter.item_shape == (3, 2, 2)
    # The fitted model is usable: denoising the mean at any level gives the mean.
    mean = from_iter.mean.reshape(3, 2, 2)
    np.testing.assert_allclose(from_iter.denoise(mean, 3.0), mean, atol=1e-5)


def test_fit_errors():
    with pytest.raises(gs.DatasetError, match="at least 2 rows"):
        gs.Moments().update(np.ones((1, 3))).fit()
    with pytest.raises(gs.DatasetError, match="shape"):
        gs.Moments().update(np.ones((2, 3))).update(np.ones((2, 4)))
    bad = np.ones((3, 3))
    bad[1, 2] = np.nan
    with pytest.raises(gs.DatasetError, match="row 1"):
        gs.Moments().update(bad)
    with pytest.raises(gs.DatasetError, match="no rows"):
        gs.fit(iter([]))
    with pytest.raises(ValueError, match="rank"):
        gs.fit(data(10, 3, seed=5), rank=4)
