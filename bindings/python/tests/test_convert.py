"""The converter from published statistics (eigval, eigvec, imgmean in [0,1]) to a model
file in [-1,1], with torch-free stand-ins passed through the pluggable loader."""

import subprocess
import sys

import numpy as np
import pytest

import gaussskip as gs
from gaussskip.convert import convert_stats

ITEM = (2, 3, 4)
D = 24


def smooth_stats(seed=0):
    """Image-like statistics: covariance decaying with pixel distance (smooth top modes),
    as torch.linalg.eigh returns them (ascending eigenvalues, eigenvectors in columns)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(D)
    cov = 0.02 * np.exp(-np.abs(idx[:, None] - idx[None, :]) / 6.0)
    vals, vecs = np.linalg.eigh(cov)
    mean = rng.uniform(0.2, 0.8, ITEM)
    return cov, {"eigval": vals, "eigvec": vecs, "imgmean": mean}


def loader_of(stats):
    return lambda path: stats


def check_model(model, cov, mean, rank=D):
    assert model.dim == D and model.rank == rank
    np.testing.assert_allclose(model.mean, 2 * mean.reshape(-1) - 1, atol=1e-6)
    want = np.sort(np.linalg.eigvalsh(4 * cov))[::-1][:rank]
    np.testing.assert_allclose(model.eigvals, want, rtol=1e-9)
    u = model.eigvecs.astype(np.float64)
    if rank == D:
        np.testing.assert_allclose(u.T @ np.diag(model.eigvals) @ u, 4 * cov, atol=1e-6)
    # Each stored row is an eigenvector of the converted covariance with its eigenvalue.
    np.testing.assert_allclose((4 * cov) @ u.T, u.T * model.eigvals, atol=1e-6)


@pytest.mark.parametrize(
    "layout_in,order_in",
    [("columns", "ascending"), ("rows", "ascending"), ("columns", "descending"), ("rows", "descending"), ("columns", "unsorted")],
)
def test_square_layouts_and_orders_are_detected(tmp_path, layout_in, order_in):
    cov, stats = smooth_stats()
    vals, vecs = stats["eigval"], stats["eigvec"]
    perm = {"ascending": np.arange(D), "descending": np.arange(D)[::-1], "unsorted": np.random.default_rng(1).permutation(D)}[order_in]
    vals, vecs = vals[perm], vecs[:, perm]
    stats = {"eigval": vals, "eigvec": vecs if layout_in == "columns" else vecs.T, "imgmean": stats["imgmean"]}
    model, rep = convert_stats("stats.pt", tmp_path / "m.safetensors", loader=loader_of(stats))
    assert rep.layout == layout_in and rep.order == order_in
    assert "undecided" not in rep.note
    check_model(model, cov, stats["imgmean"])
    assert model.item_shape == ITEM
    assert model.metadata["value_space"] == "[-1,1]"
    assert "stats.pt" in model.metadata["source"]


def test_truncated_layouts_from_shape_rank_and_residual(tmp_path):
    cov, stats = smooth_stats()
    top = slice(D - 6, D)  # the 6 largest of an ascending eigh
    for eigvec in (stats["eigvec"][:, top], stats["eigvec"][:, top].T):
        sub = {"eigval": stats["eigval"][top], "eigvec": eigvec, "imgmean": stats["imgmean"]}
        model, rep = convert_stats("s.pt", tmp_path / "t.safetensors", loader=loader_of(sub))
        assert rep.note == "from the shape"
        check_model(model, cov, stats["imgmean"], rank=6)
    model, rep = convert_stats("s.pt", tmp_path / "r.safetensors", loader=loader_of(stats), rank=5, residual="mean")
    want = np.sort(np.linalg.eigvalsh(4 * cov))[::-1]
    assert model.rank == 5
    assert model.residual_var == pytest.approx(want[5:].mean(), rel=1e-9)


def test_tiny_negative_eigenvalues_are_clipped_and_bad_input_writes_nothing(tmp_path):
    cov, stats = smooth_stats()
    vals = stats["eigval"].copy()
    vals[0] = -1e-12  # rounding noise from eigh
    model, rep = convert_stats("s.pt", tmp_path / "ok.safetensors", loader=loader_of(dict(stats, eigval=vals)))
    assert rep.clipped == 1 and model.eigvals.min() == 0.0

    dst = tmp_path / "bad.safetensors"
    vals[0] = -0.01
    with pytest.raises(gs.FileFormatError, match="clearly negative"):
        convert_stats("s.pt", dst, loader=loader_of(dict(stats, eigval=vals)))
    with pytest.raises(gs.FileFormatError, match=r"lack \['imgmean'\]"):
        convert_stats("s.pt", dst, loader=loader_of({"eigval": vals, "eigvec": stats["eigvec"]}))
    with pytest.raises(gs.FileFormatError, match="eigvec has shape"):
        convert_stats("s.pt", dst, loader=loader_of(dict(stats, eigvec=stats["eigvec"][:5])))
    noisy = dict(stats, eigvec=stats["eigvec"] + 0.05)  # not orthonormal: the library says so
    with pytest.raises(gs.FileFormatError, match="orthogonal|norm"):
        convert_stats("s.pt", dst, loader=loader_of(noisy))
    assert list(tmp_path.iterdir()) == [tmp_path / "ok.safetensors"]


def test_cli_with_npz(tmp_path):
    cov, stats = smooth_stats()
    src = tmp_path / "stats.npz"
    np.savez(src, **stats)
    dst = tmp_path / "model.safetensors"
    r = subprocess.run([sys.executable, "-m", "gaussskip.convert", str(src), str(dst), "--rank", "10"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dim 24, rank 10" in r.stdout and "ascending" in r.stdout
    check_model(gs.Model.load(dst), cov, stats["imgmean"], rank=10)
    r = subprocess.run([sys.executable, "-m", "gaussskip.convert", str(tmp_path / "none.npz"), str(dst)], capture_output=True, text=True)
    assert r.returncode == 1 and "error:" in r.stderr
