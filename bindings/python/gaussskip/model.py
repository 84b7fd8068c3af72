"""The Gaussian model and its operations over the C ABI (SPEC §4, §7, §8).

Inputs and outputs (details in ``_arrays``):

* NumPy arrays of float32 or float16 (either byte order), shape ``(batch, *item)`` or
  ``(*item,)`` for one row (``prod(item) == model.dim``); the output has the input's shape
  and dtype (trajectories put the levels first: ``(n_levels, *x.shape)``). float64 is
  computed in float32 (the library's precision) and returned as float64. Non-contiguous
  arrays are copied first. Other dtypes raise :class:`UnsupportedDtypeError`.
* PyTorch tensors (float32, float16, bfloat16; float64 as for NumPy) on the CPU or a CUDA
  device. CUDA tensors stay on the device: the call is queued on
  ``torch.cuda.current_stream(x.device)`` and returns without waiting; a contiguous tensor
  is read and written in place, other layouts take one device copy. The result keeps the
  memory format (channels_last in, channels_last out). The device path does not scan inputs
  for NaN/Inf (that would need a synchronisation).
* ``out=``: a preallocated output of the result's shape and dtype, written only on success;
  ``out=x`` works in place (through one copy of x).
* Autograd: tensors that require grad get gradients (the backward of each operation is the
  same symmetric linear map, see ``_autograd``).

Noise levels: a :class:`~gaussskip.Noise`, a number (EDM sigma), or for ``skip``/``denoise``
one level per row (see :func:`gaussskip.noise.as_levels`).
"""

import ctypes
import functools
import json
import os
import tempfile
import threading
import weakref
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from . import _arrays, _lib, _safetensors
from ._context import DeviceLike, context, parse_device, stream_handle
from .errors import FileFormatError, GaussSkipError, InvalidArgumentError, InvalidModelError, ShapeMismatchError
from .noise import Levels, Noise, as_level_list, as_levels, level_rows

if TYPE_CHECKING:
    import torch

PathLike = Union[str, "os.PathLike[str]"]
Array = TypeVar("Array", np.ndarray, "torch.Tensor")
"""A NumPy array or a PyTorch tensor: every operation returns the type it was given."""

# A CUstream handle, or None. (An alias: the calls' closures are defined on every call, and
# a subscripted annotation there would be evaluated every time.)
_Stream = Optional[int]

# The library call of one operation with its levels bound: (model handle, context, dtype
# code, x pointer, out pointer, batch, stream) -> status.
_Call = Callable[[Any, Any, int, int, int, int, Optional[int]], int]

Components = Union[None, int, str, Sequence[Union[int, str]], np.ndarray, "torch.Tensor"]
"""The component of every row: one index (or label) for all, or one per row."""


# The levels of a call: one for all rows (a Noise, or a gs_noise made straight from a plain
# number), or one per row (a list of Noise, or a float64 array of EDM sigmas).
_CallLevels = Union[_lib.GsNoise, Noise, List[Noise], np.ndarray]


def _call_levels(value: Levels, name: str) -> _CallLevels:
    """A plain number (the common call; NumPy's float scalars included) becomes its gs_noise
    at once, as level_rows would make it; everything else goes through
    :func:`~gaussskip.noise.level_rows`, which parses and checks it."""
    if isinstance(value, (float, int, np.floating)):
        return _lib.GsNoise(1.0, float(value))
    if type(value) is np.ndarray and value.ndim == 1 and value.size > 1 and value.dtype.kind == "f":
        return value.astype(np.float64)  # per-row EDM sigmas, as level_rows would copy them
    return level_rows(value, name)


def _is_one(levels: _CallLevels) -> bool:
    return isinstance(levels, (_lib.GsNoise, Noise))


def _noise_c(n: Union[_lib.GsNoise, Noise]) -> _lib.GsNoise:
    if type(n) is _lib.GsNoise:
        return n
    return _lib.GsNoise(float(n.alpha), float(n.sigma))


def _noise_array(levels: List[Noise]) -> Any:
    return (_lib.GsNoise * max(len(levels), 1))(*[_noise_c(n) for n in levels])


def _noise_rows(levels: _CallLevels, batch: int, name: str) -> Any:
    """The per-row table (batch gs_noise) that the ``*_rows`` calls read, filled through
    NumPy rather than one ctypes object per row."""
    table = np.empty((max(batch, 1), 2), np.float64)  # gs_noise: {double alpha, sigma}
    if _is_one(levels):
        one = _noise_c(levels)  # type: ignore[arg-type]
        table[:] = (one.alpha, one.sigma)
    elif len(levels) != batch:  # type: ignore[arg-type]
        raise ShapeMismatchError(
            f"`{name}` has the wrong size: expected {batch} levels (one per row), got {len(levels)}",  # type: ignore[arg-type]
            3,
        )
    elif isinstance(levels, np.ndarray):
        table[:, 0] = 1.0
        table[:, 1] = levels
    else:
        table[:] = [(float(n.alpha), float(n.sigma)) for n in levels]  # type: ignore[union-attr]
    return (_lib.GsNoise * len(table)).from_buffer(table)


class Model:
    """An immutable Gaussian model G = (mean, eigvecs, eigvals, residual_var) (SPEC §2).

    Build one with :meth:`load`, :meth:`from_arrays`, or :func:`gaussskip.fit`. Thread-safe
    to share; the operations may be called from any thread. Picklable (by value).
    """

    dim: int
    """Data dimension (values per item)."""
    rank: int
    """Number of modes (eigenvectors)."""

    def __init__(self, handle: ctypes.c_void_p, metadata: Optional[Dict[str, str]] = None) -> None:
        """Internal: wraps a ``gs_model*`` (use :meth:`load` or :meth:`from_arrays`)."""
        lib = _lib.load()
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.gs_model_free, handle)
        self._metadata = dict(metadata or {})
        self.dim = int(lib.gs_model_dim(handle))
        self.rank = int(lib.gs_model_rank(handle))

    def _adopt_handle(self, handle: ctypes.c_void_p, metadata: Dict[str, str]) -> None:
        """Internal (calibration): makes ``handle`` (the same model with more metadata) this
        object's library model. The previous handle is freed only with this object, as calls
        in flight on other threads may still use it."""
        lib = _lib.load()
        self._handle = handle
        self._retired = getattr(self, "_retired", []) + [self._finalizer]
        self._finalizer = weakref.finalize(self, lib.gs_model_free, handle)
        self._metadata = dict(metadata)
        self.__dict__.pop("_linear", None)

    # ---- construction and files -------------------------------------------------------

    @classmethod
    def load(cls, path: PathLike) -> "Model":
        """Loads and validates a model file (safetensors, SPEC §7).

        Raises:
            FileIOError: the file cannot be read. FileFormatError: its content is wrong
            (the message names the file and what is wrong).
        """
        lib = _lib.load()
        handle = ctypes.c_void_p()
        _lib.check(lib.gs_model_load(os.fsencode(path), ctypes.byref(handle)))
        try:
            meta = _safetensors.read_metadata(path)
        except (OSError, ValueError):
            meta = {}
        return cls(handle, meta)

    @classmethod
    def from_arrays(
        cls,
        mean: Any,
        eigvals: Any,
        eigvecs: Any,
        residual_var: float = 0.0,
        *,
        item_shape: Optional[Sequence[int]] = None,
        value_space: str = "",
        source: str = "",
        sample_count: int = 0,
    ) -> "Model":
        """A model from arrays: ``mean`` (dim values, any shape), ``eigvals`` (rank values,
        non-increasing, >= 0), ``eigvecs`` of shape (rank, dim) with row k the unit
        eigenvector k, and the off-subspace variance ``residual_var`` >= 0.

        Metadata (item shape, value space such as ``"[-1,1]"``, source, sample count) is
        stored in files written by :meth:`save`. A ``mean`` of more than one dimension gives
        the item shape when none is passed. Without metadata the model is built through
        ``gs_model_from_parts``, which takes eigvals and residual_var as float32; with
        metadata it goes through a model file and keeps them in float64.

        Raises:
            ShapeMismatchError: inconsistent sizes. NonFiniteError / InvalidModelError from
            the library: NaN, negative or unsorted eigvals, eigenvectors not orthonormal.
        """
        mean_a = np.asarray(mean, dtype=np.float64)
        if item_shape is None and mean_a.ndim > 1:
            item_shape = mean_a.shape
        mean_a = mean_a.reshape(-1)
        vals = np.asarray(eigvals, dtype=np.float64).reshape(-1)
        vecs = np.asarray(eigvecs, dtype=np.float64)
        dim, rank = mean_a.size, vals.size
        if vecs.shape != (rank, dim):
            raise ShapeMismatchError(
                f"`eigvecs` has the wrong size: expected (rank, dim) = ({rank}, {dim}) "
                f"(row k = eigenvector k), got shape {vecs.shape}",
                3,
            )
        meta = _metadata(item_shape, value_space, source, sample_count, dim)
        if not meta:
            lib = _lib.load()
            mean32 = np.ascontiguousarray(mean_a, dtype=np.float32)
            vals32 = np.ascontiguousarray(vals, dtype=np.float32)
            vecs32 = np.ascontiguousarray(vecs, dtype=np.float32)
            fp = ctypes.POINTER(ctypes.c_float)
            handle = ctypes.c_void_p()
            _lib.check(
                lib.gs_model_from_parts(
                    dim,
                    rank,
                    mean32.ctypes.data_as(fp),
                    vals32.ctypes.data_as(fp),
                    vecs32.ctypes.data_as(fp),
                    float(residual_var),
                    ctypes.byref(handle),
                )
            )
            return cls(handle, {})
        return cls._through_file(mean_a, vals, vecs, float(residual_var), meta)

    @classmethod
    def _through_file(cls, mean, eigvals, eigvecs, residual_var: float, meta: Dict[str, str]) -> "Model":
        """A model built through a temporary model file: the C ABI builds models without
        metadata and takes eigvals as float32, while a file keeps both (the library
        validates a file exactly like parts)."""
        tensors = _safetensors.model_tensors(mean, eigvals, eigvecs, residual_var)
        with tempfile.TemporaryDirectory(prefix="gaussskip-") as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(_safetensors.serialize(tensors, meta))
            try:
                return cls.load(path)
            except GaussSkipError as e:  # the temporary path would only confuse
                msg = str(e).replace(f"{path}: ", "", 1)
                cls_ = InvalidModelError if isinstance(e, FileFormatError) else type(e)
                raise cls_(msg, cls_.status) from None

    def save(self, path: PathLike) -> None:
        """Writes the model file atomically (temporary file + rename).

        Raises:
            FileIOError: the folder is not writable or the disk is full (target untouched).
        """
        lib = _lib.load()
        _lib.check(lib.gs_model_save(self._handle, os.fsencode(path)))

    # ---- parts ---------------------------------------------------------------------------

    def _parts(
        self, mean: bool = False, eigvals: bool = False, eigvecs: bool = False, residual: bool = False
    ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray], float]:
        lib = _lib.load()
        m = np.empty(self.dim, np.float32) if mean else None
        v = np.empty(self.rank, np.float64) if eigvals else None
        e = np.empty((self.rank, self.dim), np.float32) if eigvecs else None
        r = ctypes.c_double(0.0)
        fp, dp = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)
        _lib.check(
            lib.gs_model_get_parts(
                self._handle,
                m.ctypes.data_as(fp) if m is not None else None,
                v.ctypes.data_as(dp) if v is not None else None,
                e.ctypes.data_as(fp) if e is not None else None,
                ctypes.byref(r) if residual else None,
            )
        )
        return m, v, e, r.value

    @property
    def mean(self) -> np.ndarray:
        """The mean, float32, shape (dim,) (a copy)."""
        return self._parts(mean=True)[0]  # type: ignore[return-value]

    @property
    def eigvals(self) -> np.ndarray:
        """Mode variances, float64, non-increasing, shape (rank,) (a copy)."""
        return self._parts(eigvals=True)[1]  # type: ignore[return-value]

    @property
    def eigvecs(self) -> np.ndarray:
        """Eigenvectors, float32, shape (rank, dim), row k = u_k (a copy)."""
        return self._parts(eigvecs=True)[2]  # type: ignore[return-value]

    @property
    def residual_var(self) -> float:
        """Variance of every direction orthogonal to the eigenvectors."""
        return self._parts(residual=True)[3]

    @property
    def metadata(self) -> Dict[str, str]:
        """The file metadata (format, item_shape, value_space, sample_count, source) of a
        loaded model, or what :meth:`from_arrays` was given."""
        return dict(self._metadata)

    @property
    def item_shape(self) -> Optional[Tuple[int, ...]]:
        """Shape of one data item from the metadata, or None when unknown."""
        text = self._metadata.get("item_shape", "")
        return tuple(int(s) for s in text.split(",")) if text else None

    def __repr__(self) -> str:
        k = self.n_components
        if k > 1:
            return f"gaussskip.Model(dim={self.dim}, n_components={k}, labels={self.labels})"
        return f"gaussskip.Model(dim={self.dim}, rank={self.rank}, residual_var={self.residual_var:g})"

    # ---- components (one Gaussian per class) ----------------------------------------------

    @property
    def n_components(self) -> int:
        """Number of components (1 for an unconditional model)."""
        n = ctypes.c_size_t(0)
        _lib.check(_lib.load().gs_model_n_components(self._handle, ctypes.byref(n)))
        return int(n.value)

    def _info(self, k: int) -> Tuple[str, int]:
        lib = _lib.load()
        n, count = ctypes.c_size_t(0), ctypes.c_uint64(0)
        _lib.check(lib.gs_model_component_info(self._handle, k, None, 0, ctypes.byref(n), ctypes.byref(count)))
        buf = ctypes.create_string_buffer(n.value + 1)
        _lib.check(lib.gs_model_component_info(self._handle, k, buf, len(buf), ctypes.byref(n), None))
        return buf.value.decode("utf-8"), int(count.value)

    @property
    def labels(self) -> List[str]:
        """The components' labels (class names), in component order."""
        return [self._info(k)[0] for k in range(self.n_components)]

    @property
    def counts(self) -> List[int]:
        """The number of items each component was fitted on."""
        return [self._info(k)[1] for k in range(self.n_components)]

    def component(self, k: Union[int, str]) -> "Model":
        """Component ``k`` (an index, or a label) as a one-component model: its mean,
        eigvals, eigvecs, residual_var and label (``labels[0]``)."""
        index = self._index(k)
        handle = ctypes.c_void_p()
        _lib.check(_lib.load().gs_model_component(self._handle, index, ctypes.byref(handle)))
        meta = {key: v for key, v in self._metadata.items() if key != "components"}
        label, count = self._info(index)
        meta.update(format_version="2", sample_count=str(count))
        meta["components"] = json.dumps([{"label": label, "count": count}])
        return Model(handle, meta)

    @classmethod
    def from_components(cls, parts: Sequence["Model"], labels: Sequence[str]) -> "Model":
        """Joins one-component models into one model, component i being ``parts[i]``
        labelled ``labels[i]`` (distinct, non-empty text). Metadata comes from ``parts[0]``;
        the sample count is the sum of the parts'."""
        parts, labels = list(parts), [str(label) for label in labels]
        if len(parts) != len(labels):
            raise ShapeMismatchError(
                f"`labels` has the wrong size: expected {len(parts)} (one per part), got {len(labels)}", 3
            )
        handles = (ctypes.c_void_p * len(parts))(*[p._handle.value for p in parts])
        texts = (ctypes.c_char_p * len(labels))(*[t.encode("utf-8") for t in labels])
        handle = ctypes.c_void_p()
        _lib.check(_lib.load().gs_model_from_components(handles, texts, len(parts), ctypes.byref(handle)))
        model = cls(handle, {})
        meta = {k: v for k, v in parts[0]._metadata.items() if k not in ("components", "sample_count")}
        meta.update(format_version="2", sample_count=str(sum(model.counts)))
        meta["components"] = json.dumps([{"label": t, "count": c} for t, c in zip(model.labels, model.counts)])
        model._metadata = meta
        return model

    def _index(self, k: Union[int, str, np.integer]) -> int:
        if isinstance(k, str):
            labels = self.labels
            if k not in labels:
                raise InvalidArgumentError(f"invalid argument `component`: no component is labelled {k!r} (labels: {labels})", 2)
            return labels.index(k)
        index = int(k)
        if not 0 <= index < self.n_components:
            raise InvalidArgumentError(
                f"invalid argument `component`: {index} is out of range: the model has {self.n_components} component(s)", 2
            )
        return index

    def _components(self, component: Components) -> Optional[Callable[[int], Any]]:
        """The per-row component table of a call (a host uint32 array the library reads
        during the call), or None for component 0 everywhere."""
        if component is None:
            return None
        if _arrays.is_torch(component):
            component = component.detach().cpu().numpy()
        if isinstance(component, (str, int, np.integer)):
            one = np.uint32(self._index(component))
            return lambda batch: np.full(batch, one, np.uint32).ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        arr = np.asarray(component)
        if arr.dtype.kind in "USO":
            labels = self.labels
            lookup = {label: i for i, label in enumerate(labels)}
            missing = [v for v in arr.reshape(-1).tolist() if str(v) not in lookup]
            if missing:
                raise InvalidArgumentError(
                    f"invalid argument `component`: no component is labelled {missing[0]!r} (labels: {labels})", 2
                )
            arr = np.array([lookup[str(v)] for v in arr.reshape(-1).tolist()], dtype=np.int64)
        elif arr.dtype.kind not in "iub":
            raise InvalidArgumentError(
                f"invalid argument `component`: expected integer indices or labels, got dtype {arr.dtype}", 2
            )
        arr = arr.reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_components):
            bad = int(arr[(arr < 0) | (arr >= self.n_components)][0])
            raise InvalidArgumentError(
                f"invalid argument `component`: {bad} is out of range: the model has {self.n_components} component(s)", 2
            )
        table = np.ascontiguousarray(arr, dtype=np.uint32)

        def pointer(batch: int) -> Any:
            if table.size != batch:
                raise ShapeMismatchError(
                    f"`component` has the wrong size: expected {batch} indices (one per row), got {table.size}", 3
                )
            return table.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))

        return pointer

    # ---- pickling and copies ---------------------------------------------------------------

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        """Pickles by value (the parts in the dtypes the library holds, and the metadata), so
        a model travels to DataLoader workers, other processes and caches; unpickling
        rebuilds and revalidates it in the receiving process."""
        if self.n_components > 1:
            return (_unpickle_components, (tuple(self.component(k) for k in range(self.n_components)), tuple(self.labels)))
        m, v, e, r = self._parts(True, True, True, True)
        return (_unpickle, (m, v, e, r, dict(self._metadata)))

    def __copy__(self) -> "Model":
        return self  # immutable

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Model":
        return self

    # ---- devices ---------------------------------------------------------------------------

    def prepare(self, max_batch: int, device: DeviceLike = "cuda", *, max_levels: int = 1, stream: Any = None) -> None:
        """Uploads the model to a CUDA device ahead of time (``gs_context_prepare``), so that
        the first call there can be captured in a CUDA graph (``torch.cuda.graph``,
        ``torch.compile(mode="reduce-overhead")``): capture cannot upload.

        ``max_batch``: the largest batch of the calls to come; ``max_levels``: the largest
        level count of the trajectories to come (1 for skip/denoise). ``device``: ``"cuda"``
        (PyTorch's current device), ``"cuda:N"``, an ordinal or a ``torch.device``;
        ``"cpu"`` does nothing. ``stream``: a ``torch.cuda.Stream`` or raw CUstream (default:
        PyTorch's current stream there, or the default stream without PyTorch).

        Raises:
            NoCudaError: no CUDA device or driver, or a library built without CUDA.
            InvalidArgumentError: a bad device, or a count below 1.
        """
        for name, value in (("max_batch", max_batch), ("max_levels", max_levels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"invalid argument `{name}`: expected an integer >= 1, got {value!r}", 2)
        kind, ordinal = parse_device(device)
        if kind == _lib.GS_DEVICE_CPU:
            return
        ctx = context(kind, ordinal)
        lib = _lib.load()
        _lib.check(lib.gs_context_prepare(ctx.handle, self._handle, max_batch, max_levels, stream_handle(stream, ordinal)))

    def release(self, device: DeviceLike = "cuda") -> None:
        """Frees the model's copy on a CUDA device (``gs_context_release_model``); the next
        call there uploads it again. Nothing to do on the CPU or where it was never used."""
        kind, ordinal = parse_device(device)
        if kind == _lib.GS_DEVICE_CPU:
            return
        lib = _lib.load()
        _lib.check(lib.gs_context_release_model(context(kind, ordinal).handle, self._handle))

    # ---- operations ----------------------------------------------------------------------

    def skip(
        self, x: Array, frm: Levels, to: Levels, *, out: Optional[Array] = None, component: Components = None
    ) -> Array:
        """Exact PF-ODE jump of every row of ``x`` from level ``frm`` to level ``to``.

        Levels: :class:`Noise`, a number (EDM sigma), a sequence of batch length (one level
        per row), or an array/tensor of EDM sigmas of shape ``(1,)``, ``(batch,)`` or
        ``(batch, 1, ..., 1)``. ``frm`` must have sigma > 0; ``to`` may be 0 (the data end)
        or noisier than ``frm`` (exact inversion). ``out``: an optional preallocated output
        like ``x`` (written only on success; ``out=x`` works in place). ``component``: for a
        model of several components (one per class), the component of every row: one index,
        or one per row (a sequence, array or tensor of batch length, or class labels as text
        when the model's components are labelled); None means component 0.
        """
        lf, lt = _call_levels(frm, "from"), _call_levels(to, "to")
        lib = _lib.load()
        comp = None if component is None else self._components(component)
        one = _is_one(lf) and _is_one(lt)

        def call(handle: Any, ctx: Any, code: int, xp: int, op: int, batch: int, stream: _Stream) -> int:
            if one:
                if comp is None:
                    return lib.gs_skip(ctx, handle, code, xp, op, batch, _noise_c(lf), _noise_c(lt), stream)
                return lib.gs_skip_component(
                    ctx, handle, code, xp, op, batch, _noise_c(lf), _noise_c(lt), comp(batch), stream
                )
            f = _noise_rows(lf, batch, "from")
            t = _noise_rows(lt, batch, "to")
            if comp is None:
                return lib.gs_skip_rows(ctx, handle, code, xp, op, batch, f, t, stream)
            return lib.gs_skip_rows_component(ctx, handle, code, xp, op, batch, f, t, comp(batch), stream)

        return self._apply(x, out, call)

    def denoise(self, x: Array, at: Levels, *, out: Optional[Array] = None, component: Components = None) -> Array:
        """Posterior mean E[x0 | x_t] of every row at level ``at`` (one, or one per row as
        for :meth:`skip`; ``component`` as for :meth:`skip`)."""
        la = _call_levels(at, "at")
        lib = _lib.load()
        comp = None if component is None else self._components(component)

        def call(handle: Any, ctx: Any, code: int, xp: int, op: int, batch: int, stream: _Stream) -> int:
            if _is_one(la):
                if comp is None:
                    return lib.gs_denoise(ctx, handle, code, xp, op, batch, _noise_c(la), stream)
                return lib.gs_denoise_component(ctx, handle, code, xp, op, batch, _noise_c(la), comp(batch), stream)
            a = _noise_rows(la, batch, "at")
            if comp is None:
                return lib.gs_denoise_rows(ctx, handle, code, xp, op, batch, a, stream)
            return lib.gs_denoise_rows_component(ctx, handle, code, xp, op, batch, a, comp(batch), stream)

        return self._apply(x, out, call)

    def skip_trajectory(
        self, x: Array, frm: Levels, levels: Levels, *, out: Optional[Array] = None, component: Components = None
    ) -> Array:
        """The states along the exact path from ``frm`` at each of ``levels`` (one
        projection for all): output shape ``(len(levels), *x.shape)``.

        ``frm`` is one level for all rows (the C ABI has no per-row trajectory source);
        ``component`` as for :meth:`skip`.
        """
        return self._trajectory("gs_skip_trajectory", x, frm, levels, out, component)

    def x0_trajectory(
        self, x: Array, frm: Levels, levels: Levels, *, out: Optional[Array] = None, component: Components = None
    ) -> Array:
        """The x0-predictions along the exact path from ``frm`` at each of ``levels``:
        the "outline first, details later" view. Output shape ``(len(levels), *x.shape)``;
        ``component`` as for :meth:`skip`."""
        return self._trajectory("gs_x0_trajectory", x, frm, levels, out, component)

    def _trajectory(self, fn_name: str, x: Any, frm: Levels, levels: Levels, out: Any, component: Components) -> Any:
        lf = as_levels(frm, "from")
        if not isinstance(lf, Noise):
            raise InvalidArgumentError(
                "invalid argument `from`: trajectories take one source level for all rows "
                "(per-row sources are not in the C ABI); call once per source level",
                2,
            )
        lv = as_level_list(levels, "levels")
        comp = self._components(component)
        fn = getattr(_lib.load(), fn_name if comp is None else fn_name + "_component")

        def call_for(lvs: List[Noise]) -> _Call:
            arr = _noise_array(lvs)

            def call(handle: Any, ctx: Any, code: int, xp: int, op: int, batch: int, stream: _Stream) -> int:
                if comp is None:
                    return fn(ctx, handle, code, xp, op, batch, _noise_c(lf), arr, len(lvs), stream)
                return fn(ctx, handle, code, xp, op, batch, _noise_c(lf), arr, len(lvs), comp(batch), stream)

            return call

        return self._apply(x, out, call_for(lv), slabs=len(lv), per_level=lambda i: call_for([lv[i]]))

    # ---- buffers and autograd -------------------------------------------------------------

    def _apply(
        self,
        x: Any,
        out: Any,
        call: _Call,
        slabs: int = 1,
        per_level: Optional[Callable[[int], _Call]] = None,
    ) -> Any:
        """Runs ``call`` on x (a trajectory when ``per_level`` gives the call of each level)."""
        trajectory = per_level is not None
        bound = functools.partial(call, self._handle)
        if type(x) is np.ndarray or not _arrays.is_torch(x):
            return _arrays.run_numpy(bound, self.dim, x, out, slabs, trajectory)

        def forward(t: Any, o: Any = None) -> Any:
            return _arrays.run_torch(bound, self.dim, t, o, slabs, trajectory)

        import torch

        if not (x.requires_grad and torch.is_grad_enabled()):
            return forward(x, out)
        if out is not None:
            raise InvalidArgumentError(
                "invalid argument `out`: calls with out= do not support automatic "
                "differentiation (`x` requires grad); drop out= or call under torch.no_grad()",
                2,
            )
        from . import _autograd

        linear = self._linear_part()
        if per_level is None:
            return _autograd.apply(x, forward, lambda g: linear._apply(g, None, call))
        levels = per_level

        def adjoint(g: Any) -> Any:
            # out[i] = A_i x + c_i, so the gradient is sum_i A_i g[i].
            total = None
            for i in range(slabs):
                call_i = levels(i)
                term = linear._apply(g[i], None, call_i, 1, _constant(call_i))[0]
                total = term if total is None else total + term
            return total

        return _autograd.apply(x, forward, adjoint)

    def _linear_part(self) -> "Model":
        """The model with a zero mean: its operations are the linear parts of this model's
        (the same eigenvectors, eigenvalues and residual variance), used for gradients."""
        linear = self.__dict__.get("_linear")
        if linear is None:
            with _linear_lock:
                linear = self.__dict__.get("_linear")
                if linear is None and self.n_components > 1:
                    parts = [self.component(k)._linear_part() for k in range(self.n_components)]
                    linear = Model.from_components(parts, self.labels)
                    self._linear = linear
                elif linear is None:
                    m, v, e, r = self._parts(True, True, True, True)
                    assert m is not None
                    if not m.any():
                        linear = self
                    else:
                        linear = Model._through_file(np.zeros_like(m), v, e, r, _DEFAULT_META)
                    self._linear = linear
        return linear


def _constant(call: _Call) -> Callable[[int], _Call]:
    """The per-level calls of a one-level trajectory."""
    return lambda _: call


_linear_lock = threading.RLock()

_DEFAULT_META = {"format": "gaussskip", "format_version": "1"}


def _unpickle(mean: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray, residual_var: float, metadata: Dict[str, str]) -> Model:
    model = Model._through_file(mean, eigvals, eigvecs, residual_var, metadata or _DEFAULT_META)
    model._metadata = dict(metadata)
    return model


def _unpickle_components(parts: Tuple[Model, ...], labels: Tuple[str, ...]) -> Model:
    return Model.from_components(parts, labels)


def _metadata(
    item_shape: Optional[Sequence[int]], value_space: str, source: str, sample_count: int, dim: int
) -> Dict[str, str]:
    """The file metadata for from_arrays, or {} when nothing beyond the defaults is given."""
    if item_shape is None and not value_space and not source and not sample_count:
        return {}
    shape_text = ""
    if item_shape is not None:
        shape = tuple(int(s) for s in item_shape)
        if prod(shape) != dim:
            raise ShapeMismatchError(
                f"`item_shape` has the wrong size: expected {dim} elements, got shape {shape}", 3
            )
        shape_text = ",".join(str(s) for s in shape)
    return {
        "format": "gaussskip",
        "format_version": "1",
        "item_shape": shape_text,
        "value_space": value_space,
        "sample_count": str(int(sample_count)),
        "source": source,
    }
