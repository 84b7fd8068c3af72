"""Shared fixtures: toy models and a float64 NumPy implementation of SPEC §4 (the oracle)."""

import numpy as np
import pytest

import gaussskip as gs


def make_parts(dim, rank, residual_var, seed, spread=3.0):
    """A random Gaussian: mean, eigvals (non-increasing, spanning ``10**spread``), rows of a
    random orthonormal basis."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    vals = np.sort(10.0 ** rng.uniform(-spread, 0.5, rank))[::-1].copy()
    mean = rng.uniform(-0.5, 0.5, dim)
    # Round to what the library stores so the oracle sees the very same model.
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    return f32(mean), f32(vals), f32(q[:, :rank].T), float(np.float32(residual_var))


def as_noise(level):
    return level if isinstance(level, gs.Noise) else gs.Noise(1.0, float(level))


def _std(n, lam):
    return np.sqrt(n.alpha**2 * lam + n.sigma**2)


def _gain(n, lam):
    s2 = n.alpha**2 * lam + n.sigma**2
    return np.where(s2 > 0, n.alpha * lam / np.where(s2 > 0, s2, 1.0), 0.0)


class Reference:
    """out = a*mu + b*y + U (w * U^T y), y = x - c*mu, per row (SPEC §4), in float64."""

    def __init__(self, mean, eigvals, eigvecs, residual_var):
        self.mean, self.vals, self.vecs, self.resid = mean, np.asarray(eigvals), eigvecs, float(residual_var)

    def _apply(self, x, c, a, b, w):
        y = x - c[:, None] * self.mean
        proj = y @ self.vecs.T
        return a[:, None] * self.mean + b[:, None] * y + (w * proj) @ self.vecs

    @staticmethod
    def _rows(levels, n):
        if isinstance(levels, (list, tuple)):
            return [as_noise(v) for v in levels]
        return [as_noise(levels)] * n

    def skip(self, x, frm, to):
        x = np.asarray(x, np.float64)
        fs, ts = self._rows(frm, len(x)), self._rows(to, len(x))
        c = np.array([f.alpha for f in fs])
        a = np.array([t.alpha for t in ts])
        gp = np.array([_std(t, self.resid) / _std(f, self.resid) for f, t in zip(fs, ts)])
        w = np.stack([_std(t, self.vals) / _std(f, self.vals) for f, t in zip(fs, ts)]) - gp[:, None]
        return self._apply(x, c, a, gp, w)

    def denoise(self, x, at):
        x = np.asarray(x, np.float64)
        ns = self._rows(at, len(x))
        c = np.array([n.alpha for n in ns])
        hp = np.array([_gain(n, self.resid) for n in ns])
        w = np.stack([_gain(n, self.vals) for n in ns]) - hp[:, None]
        return self._apply(x, c, np.ones(len(x)), hp, w)

    def x0_along(self, x, frm, to):
        x = np.asarray(x, np.float64)
        f, t = as_noise(frm), as_noise(to)
        n = len(x)
        bp = _gain(t, self.resid) * _std(t, self.resid) / _std(f, self.resid)
        w = _gain(t, self.vals) * _std(t, self.vals) / _std(f, self.vals) - bp
        return self._apply(x, np.full(n, f.alpha), np.ones(n), np.full(n, bp), np.tile(w, (n, 1)))


def rel_err(got, ref):
    got = np.asarray(got, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@pytest.fixture(params=[(37, 37, 0.0), (37, 11, 0.05)], ids=["full-rank", "low-rank"])
def toy(request):
    """(model, reference) for a full-rank and a low-rank model with residual variance."""
    dim, rank, resid = request.param
    parts = make_parts(dim, rank, resid, seed=dim * 100 + rank)
    return gs.Model.from_arrays(*parts), Reference(*parts)
