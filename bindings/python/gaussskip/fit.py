"""Fitting a Gaussian model (SPEC §6) through the library's C ABI: one implementation, in
libgaussskip, for the command line, C and Python alike.

* :class:`Moments` — streaming, mergeable count, mean and centred second moments in float64
  (``gs_moments_*``), then the exact eigendecomposition. Memory: one dim x dim float64
  matrix (dim 3072: 75 MB; dim 16384: 2.1 GB).
* :class:`Sketch` — the low-rank sketch (``gs_sketch_*``) for latent-scale data: memory
  O(dim x rank), one read of the data per pass, optionally on a CUDA device through cuBLAS
  (PyTorch CUDA tensors are consumed where they are).
* :func:`fit` — either, from an array or from batches (a DataLoader of arrays, ``(x, y)``
  tuples or dicts), choosing the sketch when a rank is given and the dim x dim matrices would
  not fit in memory.

Both accumulators merge exactly (shards filled anywhere) and export their whole state as
bytes (:meth:`to_bytes`, :meth:`from_bytes`; they also pickle).
"""

import ctypes
from math import prod
from typing import Any, Iterable, Optional, Tuple, Union

import numpy as np

from . import _lib
from ._fitlib import (
    GS_FIT_SKETCH,
    _export,
    _fit_lib,
    _fit_meta,
    _is_torch,
    _model_from_handle,
    _rank_args,
    _residual_code,
    _Rows,
    _SketchInfo,
)
from .errors import DatasetError, InvalidArgumentError, ShapeMismatchError
from .model import Model

#: Keys tried, in order, for the data of a batch given as a dict.
DICT_KEYS = ("x", "image", "images", "pixel_values", "latents", "latent", "input", "inputs", "data")


class Moments:
    """Running count, mean and centred second-moment (scatter) matrix of data rows, in the
    library (float64, Chan et al.'s update: no cancellation, shards merge exactly).

    ``update`` takes a batch of shape (n, *item); ``merge`` adds another accumulator's data;
    ``fit`` gives the model. The dimension is set by the first batch.
    """

    def __init__(self) -> None:
        self._handle: Optional[ctypes.c_void_p] = None
        self.item_shape: Optional[Tuple[int, ...]] = None

    def __del__(self):
        h = getattr(self, "_handle", None)
        if h is not None and _lib._lib is not None:
            _lib._lib.gs_moments_free(h)

    def _create(self, item: Tuple[int, ...]) -> None:
        lib = _fit_lib()
        h = ctypes.c_void_p()
        _lib.check(lib.gs_moments_create(prod(item), ctypes.byref(h)))
        self._handle, self.item_shape = h, item

    @property
    def dim(self) -> Optional[int]:
        """Values per item (None before the first batch)."""
        return None if self.item_shape is None else prod(self.item_shape)

    @property
    def count(self) -> int:
        """Items added so far."""
        return 0 if self._handle is None else int(_fit_lib().gs_moments_count(self._handle))

    def _get(self, scatter: bool) -> np.ndarray:
        if self._handle is None:
            raise DatasetError("dataset: no rows were added", 13)
        d = self.dim
        mean = np.empty(d)
        m2 = np.empty((d, d)) if scatter else None
        f64p = ctypes.POINTER(ctypes.c_double)
        _lib.check(
            _fit_lib().gs_moments_get(
                self._handle, mean.ctypes.data_as(f64p), m2.ctypes.data_as(f64p) if scatter else None
            )
        )
        return m2 if scatter else mean

    @property
    def mean(self) -> np.ndarray:
        """The mean of the items, float64, shape (dim,) (a copy)."""
        return self._get(False)

    @property
    def m2(self) -> np.ndarray:
        """The scatter matrix sum_i (x_i - mean)(x_i - mean)^T, float64 (a copy)."""
        return self._get(True)

    def covariance(self) -> np.ndarray:
        """The unbiased covariance M2 / (count - 1)."""
        if self.count < 2:
            raise DatasetError(f"dataset: need at least 2 rows for a covariance, got {self.count}", 13)
        return self.m2 / (self.count - 1)

    def update(self, batch) -> "Moments":
        """Adds a batch of rows, shape (n, *item) (NumPy array or tensor; float32 is added as
        float32, everything else as float64). Returns self. Nothing is added on error."""
        rows = _Rows(batch, self.item_shape, device_ok=False)
        if rows.rows == 0:
            return self
        if self._handle is None:
            self._create(rows.item)
        lib = _fit_lib()
        rows.add_host(lib.gs_moments_add_rows, lib.gs_moments_add_rows_f64, self._handle)
        return self

    def merge(self, other: "Moments") -> "Moments":
        """Adds another accumulator's data (exactly, Chan et al.). Returns self."""
        if other._handle is None:
            return self
        if other is self:
            raise InvalidArgumentError("invalid argument `other`: cannot merge moments into themselves", 2)
        if self._handle is None:
            self._create(other.item_shape)
        elif other.item_shape != self.item_shape:
            raise ShapeMismatchError(
                f"`other` has the wrong size: items of shape {other.item_shape}, these {self.item_shape}", 3
            )
        _lib.check(_fit_lib().gs_moments_merge(self._handle, other._handle))
        return self

    def fit(
        self,
        rank: Optional[int] = None,
        residual: str = "zero",
        *,
        explained: Optional[float] = None,
        value_space: str = "",
        source: str = "",
    ) -> Model:
        """The Gaussian model of the data: eigendecomposition of the covariance (float64), the
        ``rank`` largest modes (all by default) or the fewest that carry the fraction
        ``explained`` of the variance, and ``residual_var`` 0 (``"zero"``, the papers) or the
        mean of the discarded eigenvalues (``"mean"``, keeps the trace)."""
        if self._handle is None:
            raise DatasetError("dataset: no rows", 13)
        r, e = _rank_args(rank, explained)
        code = _residual_code(residual)
        meta, _keep = _fit_meta(self.item_shape, value_space, source)
        h = ctypes.c_void_p()
        _lib.check(_fit_lib().gs_moments_fit(self._handle, r, e, code, ctypes.byref(meta), ctypes.byref(h)))
        return _model_from_handle(h)

    def to_bytes(self) -> bytes:
        """The whole state as bytes (about 8 dim^2), for :meth:`from_bytes` anywhere."""
        if self._handle is None:
            raise DatasetError("dataset: no rows were added", 13)
        return _export(_fit_lib().gs_moments_export, self._handle)

    @classmethod
    def from_bytes(cls, state: bytes, item_shape: Optional[Tuple[int, ...]] = None) -> "Moments":
        """Moments from :meth:`to_bytes` (checked by the library); ``item_shape`` defaults to
        (dim,)."""
        lib = _fit_lib()
        h = ctypes.c_void_p()
        _lib.check(lib.gs_moments_import(state, len(state), ctypes.byref(h)))
        m = cls()
        m._handle = h
        d = int(lib.gs_moments_dim(h))
        m.item_shape = tuple(item_shape) if item_shape is not None else (d,)
        if prod(m.item_shape) != d:
            raise ShapeMismatchError(f"`item_shape` has the wrong size: expected {d} elements, got {item_shape}", 3)
        return m

    def __getstate__(self):
        return {"item_shape": self.item_shape, "state": None if self._handle is None else self.to_bytes()}

    def __setstate__(self, st):
        self._handle, self.item_shape = None, None
        if st["state"] is not None:
            other = Moments.from_bytes(st["state"], st["item_shape"])
            self._handle, self.item_shape = other._handle, other.item_shape
            other._handle = None


def _cuda_ordinal(device) -> Optional[int]:
    """None for the CPU, the ordinal for "cuda", "cuda:N" or a torch device."""
    if device is None:
        return None
    text = str(device)
    if text == "cpu":
        return None
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise InvalidArgumentError(f"invalid argument `device`: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}", 2)


class Sketch:
    """A streaming, mergeable low-rank sketch of the data's covariance (SPEC §6), in the
    library: memory about 2 x dim x (rank + oversampling) float64, ``passes`` reads of the
    data (1 for data that can be read only once; the default, 5, keeps the top eigenvalues
    within 1 % on the test data). Each pass: ``update`` every batch, then ``next_pass``
    (except after the last); then ``fit``.

    ``device``: None computes on the CPU unless batches are CUDA tensors (then their device,
    through cuBLAS); ``"cpu"`` always copies to the host; ``"cuda"`` / ``"cuda:N"`` uploads
    host batches too. CUDA tensors are converted to float64 on their device.
    """

    def __init__(
        self,
        rank: int,
        *,
        oversampling: Optional[int] = None,
        passes: Optional[int] = None,
        seed: int = 0,
        device=None,
    ) -> None:
        self._handle: Optional[ctypes.c_void_p] = None
        self.item_shape: Optional[Tuple[int, ...]] = None
        self._rank = int(rank)
        self._oversampling = oversampling
        self._passes = passes
        self._seed = int(seed)
        self._device = _cuda_ordinal(device)
        self._force_cpu = device is not None and str(device) == "cpu"
        self._on_cuda: Optional[int] = None
        if self._rank < 1:
            raise InvalidArgumentError(f"invalid argument `rank`: must be >= 1, got {rank}", 2)
        if oversampling is not None and int(oversampling) < 1:
            raise InvalidArgumentError(f"invalid argument `oversampling`: must be >= 1, got {oversampling}", 2)
        if passes is not None and int(passes) < 1:
            raise InvalidArgumentError(f"invalid argument `passes`: must be >= 1, got {passes}", 2)

    def __del__(self):
        h = getattr(self, "_handle", None)
        if h is not None and _lib._lib is not None:
            _lib._lib.gs_sketch_free(h)

    def _create(self, item: Tuple[int, ...]) -> None:
        lib = _fit_lib()
        h = ctypes.c_void_p()
        over = 0 if self._oversampling is None else int(self._oversampling)
        passes = 0 if self._passes is None else int(self._passes)
        _lib.check(lib.gs_sketch_create(prod(item), self._rank, over, passes, self._seed, ctypes.byref(h)))
        self._handle, self.item_shape = h, item
        if self._device is not None:
            self._use_cuda(self._device)

    def _use_cuda(self, ordinal: int) -> None:
        _lib.check(_fit_lib().gs_sketch_use_cuda(self._handle, ordinal))
        self._on_cuda = ordinal

    def _info(self) -> _SketchInfo:
        info = _SketchInfo()
        if self._handle is not None:
            _lib.check(_fit_lib().gs_sketch_get_info(self._handle, ctypes.byref(info)))
        return info

    @property
    def dim(self) -> Optional[int]:
        """Values per item (None before the first batch)."""
        return None if self.item_shape is None else prod(self.item_shape)

    @property
    def passes(self) -> Optional[int]:
        """Planned reads of the data (None before the first batch when left to the default)."""
        if self._handle is None:
            return self._passes
        return int(self._info().passes)

    @property
    def pass_index(self) -> int:
        """The pass in progress, 1-based."""
        return 1 if self._handle is None else int(self._info().pass_)

    @property
    def count(self) -> int:
        """Items added in the pass in progress."""
        return int(self._info().count) if self._handle is not None else 0

    @property
    def width(self) -> Optional[int]:
        """Columns of the sketch (rank + oversampling, at most dim)."""
        return None if self._handle is None else int(self._info().width)

    def update(self, batch) -> "Sketch":
        """Adds a batch of rows, shape (n, *item), to the pass in progress. Returns self."""
        rows = _Rows(batch, self.item_shape, device_ok=not self._force_cpu)
        if rows.rows == 0:
            return self
        if self._handle is None:
            self._create(rows.item)
        lib = _fit_lib()
        if rows.cuda is not None:
            import torch

            ordinal = rows.device.index if rows.device.index is not None else torch.cuda.current_device()
            if self._on_cuda is None:
                self._use_cuda(ordinal)
            elif self._on_cuda != ordinal:
                raise InvalidArgumentError(
                    f"invalid argument `batch`: on cuda:{ordinal}, but the sketch computes on cuda:{self._on_cuda}", 2
                )
            stream = torch.cuda.current_stream(rows.device).cuda_stream
            _lib.check(lib.gs_sketch_add_rows_cuda(self._handle, rows.cuda.data_ptr(), rows.rows, stream))
            return self
        rows.add_host(lib.gs_sketch_add_rows, lib.gs_sketch_add_rows_f64, self._handle)
        return self

    def merge(self, other: "Sketch") -> "Sketch":
        """Adds what ``other`` saw in this pass (same plan, pass and test matrix: an
        :meth:`empty_like` of this one, or a worker's :meth:`from_bytes` of its state)."""
        if other is self:
            raise InvalidArgumentError("invalid argument `other`: cannot merge a sketch into itself", 2)
        if other._handle is None:
            return self
        if self._handle is None:
            raise InvalidArgumentError("invalid argument `other`: this sketch has no plan yet (add a batch first)", 2)
        if other.item_shape != self.item_shape:
            raise ShapeMismatchError(
                f"`other` has the wrong size: items of shape {other.item_shape}, these {self.item_shape}", 3
            )
        _lib.check(_fit_lib().gs_sketch_merge(self._handle, other._handle))
        return self

    def empty_like(self) -> "Sketch":
        """An empty sketch of the same pass and test matrix (on the host), for a shard."""
        if self._handle is None:
            raise InvalidArgumentError("invalid argument `sketch`: add a batch first (the dimension is not known)", 2)
        h = ctypes.c_void_p()
        _lib.check(_fit_lib().gs_sketch_empty_like(self._handle, ctypes.byref(h)))
        return self._wrap(h)

    def _wrap(self, h) -> "Sketch":
        s = Sketch.__new__(Sketch)
        s._handle, s.item_shape = h, self.item_shape
        s._rank, s._oversampling, s._passes, s._seed = self._rank, self._oversampling, self._passes, self._seed
        s._device, s._force_cpu, s._on_cuda = None, False, None
        return s

    def next_pass(self) -> "Sketch":
        """Ends the pass in progress; the next one must read the same items again."""
        if self._handle is None:
            raise DatasetError("dataset: no rows were added in this pass", 13)
        _lib.check(_fit_lib().gs_sketch_next_pass(self._handle))
        return self

    def fit(
        self,
        rank: Optional[int] = None,
        residual: str = "zero",
        *,
        explained: Optional[float] = None,
        value_space: str = "",
        source: str = "",
    ) -> Model:
        """The model after the last pass: ``rank`` modes (default: the planned rank) or the
        fewest planned modes that carry ``explained`` of the variance; ``residual`` as for
        :meth:`Moments.fit` (``"mean"`` uses the exactly streamed trace). The model's
        metadata records the method, passes and a captured-variance estimate."""
        if self._handle is None:
            raise DatasetError("dataset: no rows", 13)
        r, e = _rank_args(rank, explained)
        code = _residual_code(residual)
        meta, _keep = _fit_meta(self.item_shape, value_space, source)
        h = ctypes.c_void_p()
        _lib.check(_fit_lib().gs_sketch_fit(self._handle, r, e, code, ctypes.byref(meta), ctypes.byref(h)))
        return _model_from_handle(h)

    def to_bytes(self) -> bytes:
        """The whole state as bytes (plan, pass, test matrix, sums, including those on a
        device), for :meth:`from_bytes` in another process."""
        if self._handle is None:
            raise DatasetError("dataset: no rows were added", 13)
        return _export(_fit_lib().gs_sketch_export, self._handle)

    @classmethod
    def from_bytes(cls, state: bytes, item_shape: Optional[Tuple[int, ...]] = None) -> "Sketch":
        """A sketch (on the host) from :meth:`to_bytes` (checked by the library)."""
        lib = _fit_lib()
        h = ctypes.c_void_p()
        _lib.check(lib.gs_sketch_import(state, len(state), ctypes.byref(h)))
        info = _SketchInfo()
        _lib.check(lib.gs_sketch_get_info(h, ctypes.byref(info)))
        shape = tuple(item_shape) if item_shape is not None else (int(info.dim),)
        if prod(shape) != info.dim:
            lib.gs_sketch_free(h)
            raise ShapeMismatchError(f"`item_shape` has the wrong size: expected {info.dim} elements, got {item_shape}", 3)
        s = cls(int(info.rank), oversampling=int(info.width - info.rank) or None, passes=int(info.passes), seed=int(info.seed))
        s._handle, s.item_shape = h, shape
        return s

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_handle"] = None
        st["_on_cuda"] = None
        st["state"] = None if self._handle is None else self.to_bytes()
        return st

    def __setstate__(self, st):
        state = st.pop("state")
        self.__dict__.update(st)
        if state is not None:
            other = Sketch.from_bytes(state, st["item_shape"])
            self._handle = other._handle
            other._handle = None


def _take_x(batch, key: Optional[str]):
    """The data of a batch: the batch itself, the first element of an (x, y, ...) tuple or
    list, or one entry of a dict (``key``, else the first of :data:`DICT_KEYS` present, else
    the only entry)."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise InvalidArgumentError("invalid argument `data`: an empty tuple as a batch", 2)
        return batch[0]
    if isinstance(batch, dict):
        if key is not None:
            if key not in batch:
                raise InvalidArgumentError(f"invalid argument `key`: the batch has no {key!r} (has {sorted(batch)})", 2)
            return batch[key]
        for k in DICT_KEYS:
            if k in batch:
                return batch[k]
        if len(batch) == 1:
            return next(iter(batch.values()))
        raise InvalidArgumentError(
            f"invalid argument `data`: batches are dicts with keys {sorted(batch)}; say which holds the data with key=",
            2,
        )
    return batch


def _choose(dim: int, method: Optional[str], rank: Optional[int]) -> str:
    if method in ("exact", "sketch"):
        if method == "sketch" and rank is None:
            raise InvalidArgumentError("invalid argument `rank`: the sketch needs a rank", 2)
        return method
    if method is not None:
        raise InvalidArgumentError(f"invalid argument `method`: expected 'exact', 'sketch' or None, got {method!r}", 2)
    out = ctypes.c_uint32(0)
    _lib.check(_fit_lib().gs_fit_choose_method(dim, 0 if rank is None else int(rank), ctypes.byref(out)))
    return "sketch" if out.value == GS_FIT_SKETCH else "exact"


def fit(
    data: Union[np.ndarray, Iterable[Any]],
    rank: Optional[int] = None,
    residual: str = "zero",
    *,
    method: Optional[str] = None,
    explained: Optional[float] = None,
    passes: Optional[int] = None,
    oversampling: Optional[int] = None,
    seed: int = 0,
    device=None,
    key: Optional[str] = None,
    value_space: str = "",
    source: str = "",
    labels: Any = None,
) -> Model:
    """Fits a model to an array of rows (n, *item) or to batches: any iterable of arrays or
    tensors, of ``(x, y)`` tuples (x is taken; y are the labels when ``labels=True``) or of
    dicts (``key``, else ``"x"``, ``"image"``, ``"pixel_values"``, ``"latents"``, ... or the
    only entry; labels under ``"label"``, ``"labels"``, ``"y"`` or ``"class_labels"``).

    ``labels``: fit one Gaussian per class and return a model of one component per class
    (see :meth:`Model.component`): an array or tensor of one label per row of ``data`` (an
    array), or ``True`` to take them from the batches. Classes are sorted (as numbers when
    every label is an integer); a class of fewer than 2 items is refused by name. Exact fit
    only.

    ``method``: ``"exact"`` (:class:`Moments`), ``"sketch"`` (:class:`Sketch`, needs ``rank``)
    or None: the sketch when ``rank`` is given and the dim x dim matrices would not fit in
    memory, else exact. The sketch reads the data ``passes`` times, so ``data`` must then be
    re-iterable (an array, a list, a DataLoader), not a one-shot generator, unless
    ``passes=1``. ``device`` as for :class:`Sketch`. Other options: see :meth:`Moments.fit`.
    """
    single = isinstance(data, np.ndarray) or _is_torch(data)
    if labels is not None and labels is not False:
        if method == "sketch":
            raise InvalidArgumentError("invalid argument `method`: fitting by class uses the exact fit", 2)
        return _fit_classes(data, labels, single, key, rank, residual, explained, value_space, source)
    one_shot = not single and iter(data) is data
    if method == "sketch" and one_shot and passes != 1:
        raise InvalidArgumentError(
            "invalid argument `data`: a one-shot iterator can be read only once, but the sketch reads the data "
            "`passes` times; pass a list or DataLoader, or passes=1",
            2,
        )

    def batches():
        if single:
            yield data
        else:
            for b in data:
                yield _take_x(b, key)

    acc: Union[Moments, Sketch, None] = None
    for b in batches():
        if acc is None:
            shape = tuple(b.shape) if hasattr(b, "shape") else np.shape(b)
            if len(shape) == 0:
                raise ShapeMismatchError("`data` has the wrong size: expected batches of shape (n, *item)", 3)
            chosen = _choose(prod(shape[1:]) if len(shape) > 1 else 1, method, rank)
            if chosen == "sketch":
                acc = Sketch(rank, oversampling=oversampling, passes=passes, seed=seed, device=device)
            else:
                acc = Moments()
            acc.update(b)
            if isinstance(acc, Sketch) and one_shot and acc.passes > 1:
                raise InvalidArgumentError(
                    "invalid argument `data`: the dim x dim matrices do not fit in memory, so the sketch was "
                    "chosen, and it reads the data several times; pass a re-iterable (list, DataLoader) or passes=1",
                    2,
                )
            continue
        acc.update(b)
    if acc is None or acc.count == 0:
        raise DatasetError("dataset: no rows", 13)
    if isinstance(acc, Sketch):
        for _ in range(acc.passes - 1):
            acc.next_pass()
            for b in batches():
                acc.update(b)
    return acc.fit(rank, residual, explained=explained, value_space=value_space, source=source)


LABEL_KEYS = ("label", "labels", "y", "class_labels", "targets")


def _take_labels(batch) -> Any:
    """The labels of a batch: the second element of an (x, y, ...) tuple, or a dict entry."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, dict):
        for k in LABEL_KEYS:
            if k in batch:
                return batch[k]
    raise InvalidArgumentError(
        "invalid argument `labels`: labels=True takes them from (x, y) batches or dicts with one of "
        f"{list(LABEL_KEYS)}; pass an array of labels for array data",
        2,
    )


def _class_moments(data, labels, single, key) -> dict:
    """One :class:`Moments` per label of ``data`` (see :func:`fit`'s ``labels``)."""
    if single:
        if labels is True:
            raise InvalidArgumentError("invalid argument `labels`: for array data pass the labels themselves", 2)
        pairs = [(data, labels)]
    elif labels is True:
        pairs = ((_take_x(b, key), _take_labels(b)) for b in data)
    else:
        raise InvalidArgumentError("invalid argument `labels`: with batches, use labels=True ((x, y) batches)", 2)
    classes: dict = {}
    for x, y in pairs:
        if _is_torch(y):
            y = y.detach().cpu().numpy()
        y = np.asarray(y).reshape(-1)
        n = int(x.shape[0]) if hasattr(x, "shape") else len(x)
        if y.size != n:
            raise ShapeMismatchError(f"`labels` has the wrong size: expected {n} (one per row), got {y.size}", 3)
        if _is_torch(x):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        for label in np.unique(y):
            rows = x[y == label]
            classes.setdefault(label.item() if hasattr(label, "item") else label, Moments()).update(rows)
    return classes


def _sorted_labels(labels) -> list:
    """Class order: as numbers when every label is an integer, else as text."""
    names = list(labels)
    if all(isinstance(v, (int, np.integer)) for v in names):
        return sorted(names)
    return sorted(names, key=str)


def _fit_class_moments(classes: dict, rank, residual, explained, value_space, source) -> Model:
    """The model of one component per class, fitted by the library (gs_moments_fit_classes)."""
    if not classes:
        raise DatasetError("dataset: no rows", 13)
    names = _sorted_labels(classes)
    accs = [classes[k] for k in names]
    r, e = _rank_args(rank, explained)
    meta, _keep = _fit_meta(accs[0].item_shape, value_space, source)
    handles = (ctypes.c_void_p * len(accs))(*[a._handle.value if hasattr(a._handle, "value") else a._handle for a in accs])
    texts = (ctypes.c_char_p * len(names))(*[str(v).encode("utf-8") for v in names])
    h = ctypes.c_void_p()
    _lib.check(
        _fit_lib().gs_moments_fit_classes(
            handles, texts, len(accs), r, e, _residual_code(residual), ctypes.byref(meta), ctypes.byref(h)
        )
    )
    return _model_from_handle(h)


def _fit_classes(data, labels, single, key, rank, residual, explained, value_space, source) -> Model:
    classes = _class_moments(data, labels, single, key)
    return _fit_class_moments(classes, rank, residual, explained, value_space, source)
