"""Converts the Gaussian statistics published with the original papers into a model file.

Input: a mapping with ``eigval`` (r), ``eigvec`` (the eigenvectors, as columns ``(d, r)``
like ``torch.linalg.eigh`` returns them, or as rows ``(r, d)``) and ``imgmean`` (the mean,
any shape, e.g. ``(3, 32, 32)``), in [0, 1] pixel space; by default a torch file
(``torch.load``), or a NumPy ``.npz`` with the same keys.

Output: our model file in the sampler's [-1, 1] space. With x' = scale * x + shift
(default 2x - 1): mean' = 2 mean - 1, eigvals' = 4 eigvals, eigenvectors unchanged.

Handled: eigenvalues in ascending order (``eigh``), descending, or unsorted (sorted
descending with their vectors); tiny negative eigenvalues from rounding (set to 0; a
clearly negative one is an error); column or row layout, from the shape when r < d. For a
square matrix both layouts are orthogonal, so the layout is detected from the data: the
top eigenvectors of image statistics are smooth (neighbouring pixels alike), the rows of
the other reading are not; pass ``layout=`` when the data are not images.

Command line::

    python -m gaussskip.convert stats.pt model.safetensors [--rank R] [--residual mean]
"""

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Tuple

import numpy as np

from .errors import FileFormatError
from .model import Model

#: Smoothness gap between the two readings of a square eigenvector matrix needed to decide.
_LAYOUT_MARGIN = 0.2


@dataclass
class ConversionReport:
    """What :func:`convert_stats` found and did."""

    dim: int
    rank: int
    layout: str
    order: str
    item_shape: Optional[Tuple[int, ...]]
    clipped: int
    residual_var: float
    note: str = ""


def load_stats(path) -> Mapping[str, object]:
    """The default loader: ``.npz`` with NumPy, anything else with ``torch.load``."""
    p = str(path)
    if p.endswith(".npz"):
        with np.load(p) as z:
            return {k: z[k] for k in z.files}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {p} needs PyTorch (pip install torch), or pass the statistics as .npz "
            "with the keys eigval, eigvec, imgmean"
        ) from e
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        return torch.load(p, map_location="cpu")


def _array(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def _smoothness(vectors: np.ndarray) -> float:
    """Mean lag-1 autocorrelation of rows (1 for smooth images, about 0 for noise)."""
    num = np.sum(vectors[:, :-1] * vectors[:, 1:], axis=1)
    den = np.sum(vectors * vectors, axis=1)
    return float(np.mean(num / np.where(den > 0, den, 1.0)))


def _rows_layout(vecs: np.ndarray, vals: np.ndarray, dim: int, layout: str) -> Tuple[np.ndarray, str, str]:
    """Eigenvectors as rows (r, d), the layout used, and a note on how it was decided."""
    r = vals.size
    if layout not in ("auto", "rows", "columns"):
        raise ValueError(f"layout must be 'auto', 'rows' or 'columns', got {layout!r}")
    if vecs.ndim != 2 or sorted(vecs.shape) != sorted((r, dim)):
        raise FileFormatError(
            f"eigvec has shape {vecs.shape}, expected ({dim}, {r}) or ({r}, {dim}) for {r} eigenvalues of dimension {dim}",
            8,
        )
    if layout == "columns" or (layout == "auto" and r != dim and vecs.shape == (dim, r)):
        if vecs.shape != (dim, r):
            raise FileFormatError(f"eigvec has shape {vecs.shape}, columns need ({dim}, {r})", 8)
        return vecs.T, "columns", "given" if layout == "columns" else "from the shape"
    if layout == "rows" or (layout == "auto" and r != dim):
        if vecs.shape != (r, dim):
            raise FileFormatError(f"eigvec has shape {vecs.shape}, rows need ({r}, {dim})", 8)
        return vecs, "rows", "given" if layout == "rows" else "from the shape"
    top = np.argsort(-vals, kind="stable")[: min(4, r)]
    as_cols, as_rows = _smoothness(vecs[:, top].T), _smoothness(vecs[top, :])
    note = f"square: top-mode smoothness as columns {as_cols:.2f}, as rows {as_rows:.2f}"
    if abs(as_cols - as_rows) < _LAYOUT_MARGIN:
        return vecs.T, "columns", note + "; undecided, assumed columns (torch.linalg.eigh); pass layout= to override"
    if as_cols > as_rows:
        return vecs.T, "columns", note
    return vecs, "rows", note


def convert_arrays(
    stats: Mapping[str, object],
    *,
    scale: float = 2.0,
    shift: float = -1.0,
    layout: str = "auto",
    rank: Optional[int] = None,
    residual: str = "zero",
):
    """The converted parts ``(mean, eigvals, eigvecs_rows, residual_var, report)``."""
    missing = [k for k in ("eigval", "eigvec", "imgmean") if k not in stats]
    if missing:
        raise FileFormatError(f"statistics lack {missing}; found keys {sorted(map(str, stats))}", 8)
    mean_in = _array(stats["imgmean"])
    item_shape = tuple(mean_in.shape) if mean_in.ndim > 1 else None
    mean = mean_in.reshape(-1)
    vals = _array(stats["eigval"]).reshape(-1)
    vecs_rows, used, note = _rows_layout(_array(stats["eigvec"]), vals, mean.size, layout)
    if np.all(np.diff(vals) >= 0):
        order = "ascending" if vals.size > 1 and vals[0] != vals[-1] else "constant"
    elif np.all(np.diff(vals) <= 0):
        order = "descending"
    else:
        order = "unsorted"
    perm = np.argsort(-vals, kind="stable")
    vals, vecs_rows = vals[perm], vecs_rows[perm]
    top = max(float(np.max(np.abs(vals))), float(np.finfo(np.float64).tiny))
    if vals[-1] < -1e-6 * top:
        raise FileFormatError(f"eigval holds a clearly negative value {vals[-1]:g} (largest {top:g}): not a covariance", 8)
    clipped = int(np.sum(vals < 0))
    vals = np.clip(vals, 0.0, None)
    if residual not in ("zero", "mean"):
        raise ValueError(f"residual must be 'zero' or 'mean', got {residual!r}")
    r = vals.size if rank is None else int(rank)
    if not 1 <= r <= vals.size:
        raise ValueError(f"rank must be in 1..={vals.size}, got {rank}")
    scaled = vals * scale * scale
    resid = float(scaled[r:].mean()) if (residual == "mean" and r < vals.size) else 0.0
    report = ConversionReport(mean.size, r, used, order, item_shape, clipped, resid, note)
    return scale * mean + shift, scaled[:r], vecs_rows[:r], resid, report


def convert_stats(
    src,
    dst,
    *,
    loader: Optional[Callable[[str], Mapping[str, object]]] = None,
    scale: float = 2.0,
    shift: float = -1.0,
    value_space: str = "[-1,1]",
    layout: str = "auto",
    rank: Optional[int] = None,
    residual: str = "zero",
) -> Tuple[Model, ConversionReport]:
    """Reads published statistics from ``src`` (with ``loader``, default :func:`load_stats`),
    converts them (see the module docstring) and writes the model file ``dst`` atomically:
    the file is validated by loading it before it replaces ``dst``, so nothing is written
    on error. Returns the loaded model and a report."""
    stats = (loader or load_stats)(str(src))
    mean, vals, vecs, resid, report = convert_arrays(
        stats, scale=scale, shift=shift, layout=layout, rank=rank, residual=residual
    )
    from . import _safetensors

    meta = {
        "format": "gaussskip",
        "format_version": "1",
        "item_shape": ",".join(map(str, report.item_shape)) if report.item_shape else "",
        "value_space": value_space,
        "sample_count": "0",
        "source": f"converted from {Path(str(src)).name} (x' = {scale:g} x {shift:+g}; eigvec {report.layout}, {report.order})",
    }
    data = _safetensors.serialize(_safetensors.model_tensors(mean, vals, vecs, resid), meta)
    target = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent or "."))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Model.load(tmp)  # the library's validation, before the target is touched
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Model.load(target), report


def main(argv=None) -> int:
    """``python -m gaussskip.convert in.pt out.safetensors``."""
    ap = argparse.ArgumentParser(
        prog="python -m gaussskip.convert",
        description="Convert published Gaussian statistics (eigval, eigvec, imgmean in [0,1]) to a gaussskip model file in [-1,1].",
    )
    ap.add_argument("src", help="torch file (or .npz) with eigval, eigvec, imgmean")
    ap.add_argument("dst", help="output model file (.safetensors)")
    ap.add_argument("--rank", type=int, default=None, help="keep the largest RANK modes (default: all)")
    ap.add_argument("--residual", choices=["zero", "mean"], default="zero", help="variance off the kept modes")
    ap.add_argument("--layout", choices=["auto", "rows", "columns"], default="auto", help="eigvec layout")
    ap.add_argument("--scale", type=float, default=2.0, help="x' = scale * x + shift (default 2)")
    ap.add_argument("--shift", type=float, default=-1.0, help="(default -1)")
    ap.add_argument("--value-space", default="[-1,1]", help="recorded in the file (default [-1,1])")
    args = ap.parse_args(argv)
    try:
        model, rep = convert_stats(
            args.src,
            args.dst,
            scale=args.scale,
            shift=args.shift,
            value_space=args.value_space,
            layout=args.layout,
            rank=args.rank,
            residual=args.residual,
        )
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.dst}: dim {model.dim}, rank {model.rank}, item shape {rep.item_shape}, "
        f"eigvec {rep.layout} ({rep.note}), eigval order {rep.order}, {rep.clipped} negative set to 0, "
        f"residual_var {rep.residual_var:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
