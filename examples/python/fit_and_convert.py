"""Fitting a model from batches (mergeable moments), saving it, and converting published
statistics (eigval, eigvec, imgmean in [0,1]) to a model file in [-1,1].

    m = gs.Moments(); m.update(batch) ...; shard_a.merge(shard_b); model = m.fit(rank=r)
    python -m gaussskip.convert stats.pt model.safetensors

Run: python examples/python/fit_and_convert.py   (after `pip install ./bindings/python`)
"""

import tempfile
from pathlib import Path

import numpy as np

import gaussskip as gs
from _toy import check, toy_data
from gaussskip.convert import convert_stats


def main():
    data = toy_data(8000, seed=5)  # items (1, 8, 8), values in the sampler's space

    # Two shards accumulated separately (e.g. on two machines), merged exactly.
    a, b = gs.Moments(), gs.Moments()
    for i in range(0, 4000, 500):
        a.update(data[i : i + 500])
    for i in range(4000, 8000, 500):
        b.update(data[i : i + 500])
    model = a.merge(b).fit(rank=24, residual="mean", value_space="[-1,1]", source="toy")
    one_pass = gs.fit(data, rank=24, residual="mean")
    print(f"fitted {model}: top eigvals {np.round(model.eigvals[:3], 3)}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "toy.safetensors"
        model.save(path)
        back = gs.Model.load(path)
        print(f"saved and loaded: metadata {back.metadata}")

        # Published statistics are in [0,1] pixel space with eigh's layout (ascending
        # eigenvalues, eigenvectors in columns): make such a file from the same data.
        pixels = (data.reshape(len(data), -1) + 1) / 2
        vals, vecs = np.linalg.eigh(np.cov(pixels, rowvar=False))
        stats = {"eigval": vals, "eigvec": vecs, "imgmean": pixels.mean(axis=0).reshape(1, 8, 8)}
        np.savez(Path(tmp) / "stats.npz", **stats)  # a torch file in the wild; .npz here
        converted, report = convert_stats(Path(tmp) / "stats.npz", Path(tmp) / "converted.safetensors", rank=24, residual="mean")
        print(f"converted: eigvec {report.layout} ({report.note}), order {report.order}")

    check(np.allclose(model.eigvals, one_pass.eigvals, rtol=1e-10), "merged shards fit = one-pass fit")
    check(back.item_shape == (1, 8, 8) and back.metadata["sample_count"] == "8000", "metadata survives save/load")
    check(report.layout == "columns" and report.order == "ascending", "layout and order detected")
    check(np.allclose(converted.eigvals, model.eigvals, rtol=1e-6), "converted [0,1] stats = the [-1,1] fit (eigvals x 4)")
    check(np.allclose(converted.mean, model.mean, atol=1e-5), "mean' = 2 mean - 1")
    print("OK")


if __name__ == "__main__":
    main()
