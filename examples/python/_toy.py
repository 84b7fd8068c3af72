"""A toy data set shared by the examples: 8x8 "images" drawn from a Gaussian with a smooth,
image-like covariance, and the model fitted to them. The model's own denoiser stands in for
the trained network, so every example can check its result against the exact answer."""

import numpy as np

import gaussskip as gs

SIDE = 8


def toy_data(n, seed=0):
    """n items of shape (1, 8, 8) in [-1, 1]-ish range with correlated pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    cov = 0.25 * np.exp(-dist / 3.0)
    mean = 0.3 * np.sin(pos[:, 0] / 2.0) * np.cos(pos[:, 1] / 3.0)
    rows = rng.multivariate_normal(mean, cov, size=n)
    return rows.reshape(n, 1, SIDE, SIDE)


def toy_model():
    """The Gaussian fitted to 20,000 toy items, streamed in batches of 2,000."""
    data = toy_data(20_000)
    return gs.fit((data[i : i + 2000] for i in range(0, len(data), 2000)), value_space="toy")


def rel(a, b):
    """Relative distance ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check(ok, what):
    """Prints a check's outcome; exits with status 1 on failure."""
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        raise SystemExit(1)
