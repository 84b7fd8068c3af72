"""Fitting a Gaussian model: streaming, mergeable moments in float64 (SPEC §6), pure NumPy.

Each batch contributes its own mean and centred second moment, combined with Chan et al.'s
parallel update, so no large offset is ever squared (no cancellation) and shards computed
anywhere merge exactly. Memory is one dim x dim float64 matrix (dim = 3072 for CIFAR-10:
75 MB; dim = 12288: 1.2 GB).
"""

from typing import Iterable, Optional, Tuple, Union

import numpy as np

from .errors import DatasetError
from .model import Model


class Moments:
    """Running count, mean and centred second-moment matrix M2 of data rows.

    ``update`` takes a batch of shape (n, *item); ``merge`` combines two accumulators as if
    one had seen both datasets; ``fit`` gives the model.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Optional[np.ndarray] = None
        self.m2: Optional[np.ndarray] = None
        self.item_shape: Optional[Tuple[int, ...]] = None

    @property
    def dim(self) -> Optional[int]:
        return None if self.mean is None else self.mean.size

    def update(self, batch) -> "Moments":
        """Adds a batch of rows, shape (n, *item) (converted to float64). Returns self."""
        b = np.asarray(batch, dtype=np.float64)
        if b.ndim == 0:
            raise DatasetError("dataset: a batch must have shape (n, *item), got a scalar", 13)
        item = tuple(b.shape[1:])
        if self.item_shape is not None and item != self.item_shape:
            raise DatasetError(f"dataset: batch items have shape {item}, earlier ones {self.item_shape}", 13)
        n = b.shape[0]
        if n == 0:
            return self
        rows = b.reshape(n, -1)
        if not np.isfinite(rows).all():
            row = int(np.nonzero(~np.isfinite(rows).all(axis=1))[0][0])
            raise DatasetError(f"dataset: row {row} of the batch holds NaN or Inf", 13)
        mean = rows.mean(axis=0)
        centred = rows - mean
        other = Moments()
        other.count, other.mean, other.m2, other.item_shape = n, mean, centred.T @ centred, item
        return self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        """Adds another accumulator's data (Chan et al.). Returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.item_shape = other.count, other.item_shape
            self.mean, self.m2 = other.mean.copy(), other.m2.copy()
            return self
        if other.item_shape != self.item_shape:
            raise DatasetError(f"dataset: cannot merge items of shape {other.item_shape} into {self.item_shape}", 13)
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        self.count = n
        return self

    def covariance(self) -> np.ndarray:
        """The unbiased covariance M2 / (count - 1)."""
        if self.count < 2:
            raise DatasetError(f"dataset: need at least 2 rows for a covariance, got {self.count}", 13)
        return self.m2 / (self.count - 1)

    def fit(
        self,
        rank: Optional[int] = None,
        residual: str = "zero",
        *,
        value_space: str = "",
        source: str = "",
    ) -> Model:
        """The Gaussian model of the data: eigendecomposition (float64) of the covariance,
        the ``rank`` largest modes (all by default), and ``residual_var`` = 0 (``"zero"``,
        as in the papers) or the mean of the discarded eigenvalues (``"mean"``, keeps the
        trace). Tiny negative eigenvalues from rounding are set to 0."""
        cov = self.covariance()
        d = cov.shape[0]
        r = d if rank is None else int(rank)
        if not 1 <= r <= d:
            raise ValueError(f"rank must be in 1..={d}, got {rank}")
        if residual not in ("zero", "mean"):
            raise ValueError(f"residual must be 'zero' or 'mean', got {residual!r}")
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1]
        vals = np.clip(vals[order], 0.0, None)
        vecs = vecs[:, order]
        resid = float(vals[r:].mean()) if (residual == "mean" and r < d) else 0.0
        return Model.from_arrays(
            self.mean,
            vals[:r],
            vecs[:, :r].T,
            resid,
            item_shape=self.item_shape if self.item_shape else (d,),
            value_space=value_space,
            source=source,
            sample_count=self.count,
        )


def _host(batch):
    """A NumPy view of a batch (CPU or CUDA tensors are copied to the host in float64)."""
    if hasattr(batch, "detach"):
        return batch.detach().cpu().double().numpy()
    return batch


def fit(
    data: Union[np.ndarray, Iterable],
    rank: Optional[int] = None,
    residual: str = "zero",
    *,
    value_space: str = "",
    source: str = "",
) -> Model:
    """Fits a model to an array of rows (n, *item) or to an iterable of such batches
    (NumPy arrays or CPU tensors), streaming: see :meth:`Moments.fit` for the options."""
    m = Moments()
    if isinstance(data, np.ndarray) or hasattr(data, "detach"):
        m.update(_host(data))  # one array: rows along the first axis (not an iterable of rows)
    else:
        for batch in data:
            m.update(_host(batch))
    if m.count == 0:
        raise DatasetError("dataset: no rows", 13)
    return m.fit(rank, residual, value_space=value_space, source=source)
