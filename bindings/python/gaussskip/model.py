"""The Gaussian model and its operations over the C ABI (SPEC §4, §7, §8).

Inputs and outputs:

* NumPy arrays of float32 or float16, shape ``(batch, *item)`` or ``(*item,)`` for one row
  (``prod(item) == model.dim``); the output has the input's shape and dtype (trajectories
  put the levels first: ``(n_levels, *x.shape)``). float64 input is computed in float32
  (the library's precision) and returned as float64. Non-contiguous arrays are copied to a
  contiguous one first. Other dtypes raise :class:`UnsupportedDtypeError`.
* PyTorch CPU tensors (float32, float16, bfloat16; float64 as for NumPy) take the host path.
* PyTorch CUDA tensors (float32, float16, bfloat16, contiguous) take the device path:
  no copies, the call is queued on ``torch.cuda.current_stream(x.device)`` and returns
  without waiting. Non-contiguous tensors or float64 raise instead of copying. The device
  path does not scan inputs for NaN/Inf (that would need a synchronisation).

Noise levels: a :class:`~gaussskip.Noise`, a number (EDM sigma), or for ``skip``/``denoise``
a sequence of them (or a 1-D array of EDM sigmas) of batch length for one level per row.
"""

import ctypes
import os
import tempfile
import threading
import weakref
from math import prod
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib, _safetensors
from .errors import (
    FileFormatError,
    GaussSkipError,
    InvalidArgumentError,
    InvalidModelError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from .noise import Noise, as_level_list, as_levels

PathLike = Union[str, "os.PathLike[str]"]


class _Context:
    """A library context (CPU, or one CUDA device), freed with the object."""

    def __init__(self, device: int, ordinal: int):
        lib = _lib.load()
        handle = ctypes.c_void_p()
        _lib.check(lib.gs_context_create(device, ordinal, ctypes.byref(handle)))
        self.handle = handle
        self._finalizer = weakref.finalize(self, lib.gs_context_free, handle)


_contexts: Dict[Tuple[int, int], _Context] = {}
_contexts_lock = threading.Lock()


def _context(device: int, ordinal: int = 0) -> _Context:
    key = (device, ordinal)
    ctx = _contexts.get(key)
    if ctx is None:
        with _contexts_lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = _Context(device, ordinal)
                _contexts[key] = ctx
    return ctx


def _noise_c(n: Noise) -> _lib.GsNoise:
    return _lib.GsNoise(float(n.alpha), float(n.sigma))


def _noise_array(levels: List[Noise]):
    return (_lib.GsNoise * max(len(levels), 1))(*[_noise_c(n) for n in levels])


def _batch_of(shape: Tuple[int, ...], dim: int) -> int:
    if len(shape) >= 1 and prod(shape[1:]) == dim:
        return int(shape[0])
    if prod(shape) == dim:
        return 1
    raise ShapeMismatchError(
        f"`x` has the wrong size: expected shape (batch, *item) with {dim} values per item, "
        f"or one item of {dim} values, got shape {tuple(shape)}",
        3,
    )


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


_NUMPY_CODES = {np.dtype(np.float32): _lib.GS_DTYPE_F32, np.dtype(np.float16): _lib.GS_DTYPE_F16}


def _torch_codes(torch):
    return {torch.float32: _lib.GS_DTYPE_F32, torch.float16: _lib.GS_DTYPE_F16, torch.bfloat16: _lib.GS_DTYPE_BF16}


def _dtype_error(got) -> UnsupportedDtypeError:
    return UnsupportedDtypeError(
        f"unsupported dtype: `x` has dtype {got}; gaussskip takes float32, float16 or bfloat16 "
        "(float64 arrays and CPU tensors are computed in float32)",
        9,
    )


class Model:
    """An immutable Gaussian model G = (mean, eigvecs, eigvals, residual_var) (SPEC §2).

    Build one with :meth:`load`, :meth:`from_arrays`, or :func:`gaussskip.fit`. Thread-safe
    to share; the operations may be called from any thread.
    """

    def __init__(self, handle: ctypes.c_void_p, metadata: Optional[Dict[str, str]] = None):
        """Internal: wraps a ``gs_model*`` (use :meth:`load` or :meth:`from_arrays`)."""
        lib = _lib.load()
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.gs_model_free, handle)
        self._metadata = dict(metadata or {})
        self.dim = int(lib.gs_model_dim(handle))
        self.rank = int(lib.gs_model_rank(handle))

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
        mean,
        eigvals,
        eigvecs,
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
        # The C ABI builds models without metadata: go through a model file, which the
        # library validates exactly like parts (and which keeps eigvals in float64).
        tensors = _safetensors.model_tensors(mean_a, vals, vecs, float(residual_var))
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

    def _parts(self, mean=False, eigvals=False, eigvecs=False, residual=False):
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
        return self._parts(mean=True)[0]

    @property
    def eigvals(self) -> np.ndarray:
        """Mode variances, float64, non-increasing, shape (rank,) (a copy)."""
        return self._parts(eigvals=True)[1]

    @property
    def eigvecs(self) -> np.ndarray:
        """Eigenvectors, float32, shape (rank, dim), row k = u_k (a copy)."""
        return self._parts(eigvecs=True)[2]

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
        return f"gaussskip.Model(dim={self.dim}, rank={self.rank}, residual_var={self.residual_var:g})"

    # ---- operations ----------------------------------------------------------------------

    def skip(self, x, frm, to, *, out=None):
        """Exact PF-ODE jump of every row of ``x`` from level ``frm`` to level ``to``.

        Levels: :class:`Noise`, a number (EDM sigma), or a sequence of batch length (one
        level per row). ``frm`` must have sigma > 0; ``to`` may be 0 (the data end) or
        noisier than ``frm`` (exact inversion). ``out``: an optional preallocated output
        like ``x`` (written only on success).
        """
        lf, lt = as_levels(frm, "from"), as_levels(to, "to")
        lib = _lib.load()

        def call(ctx, code, xp, op, batch, stream):
            if isinstance(lf, Noise) and isinstance(lt, Noise):
                return lib.gs_skip(ctx, self._handle, code, xp, op, batch, _noise_c(lf), _noise_c(lt), stream)
            f = _rows(lf, batch, "from")
            t = _rows(lt, batch, "to")
            return lib.gs_skip_rows(ctx, self._handle, code, xp, op, batch, _noise_array(f), _noise_array(t), stream)

        return self._execute(x, out, 1, call)

    def denoise(self, x, at, *, out=None):
        """Posterior mean E[x0 | x_t] of every row at level ``at`` (one or one per row)."""
        la = as_levels(at, "at")
        lib = _lib.load()

        def call(ctx, code, xp, op, batch, stream):
            if isinstance(la, Noise):
                return lib.gs_denoise(ctx, self._handle, code, xp, op, batch, _noise_c(la), stream)
            a = _rows(la, batch, "at")
            return lib.gs_denoise_rows(ctx, self._handle, code, xp, op, batch, _noise_array(a), stream)

        return self._execute(x, out, 1, call)

    def skip_trajectory(self, x, frm, levels, *, out=None):
        """The states along the exact path from ``frm`` at each of ``levels`` (one
        projection for all): output shape ``(len(levels), *x.shape)``.

        ``frm`` is one level for all rows (the C ABI has no per-row trajectory source).
        """
        return self._trajectory("gs_skip_trajectory", x, frm, levels, out)

    def x0_trajectory(self, x, frm, levels, *, out=None):
        """The x0-predictions along the exact path from ``frm`` at each of ``levels``:
        the "outline first, details later" view. Output shape ``(len(levels), *x.shape)``."""
        return self._trajectory("gs_x0_trajectory", x, frm, levels, out)

    def _trajectory(self, fn_name, x, frm, levels, out):
        lf = as_levels(frm, "from")
        if not isinstance(lf, Noise):
            raise InvalidArgumentError(
                "invalid argument `from`: trajectories take one source level for all rows "
                "(per-row sources are not in the C ABI); call once per source level",
                2,
            )
        lv = as_level_list(levels, "levels")
        fn = getattr(_lib.load(), fn_name)
        arr = _noise_array(lv)

        def call(ctx, code, xp, op, batch, stream):
            return fn(ctx, self._handle, code, xp, op, batch, _noise_c(lf), arr, len(lv), stream)

        return self._execute(x, out, len(lv), call, trajectory=True)

    # ---- buffers ---------------------------------------------------------------------------

    def _execute(self, x, out, slabs: int, call, trajectory: bool = False):
        if _is_torch(x):
            return self._execute_torch(x, out, slabs, call, trajectory)
        return self._execute_numpy(x, out, slabs, call, trajectory)

    def _execute_numpy(self, x, out, slabs, call, trajectory):
        arr = np.asarray(x)
        if arr.dtype == np.float64:
            work = np.float32
        elif arr.dtype in _NUMPY_CODES:
            work = arr.dtype
        else:
            raise _dtype_error(arr.dtype)
        code = _NUMPY_CODES[np.dtype(work)]
        batch = _batch_of(arr.shape, self.dim)
        src = np.ascontiguousarray(arr, dtype=work)
        shape = (slabs, *arr.shape) if trajectory else arr.shape
        direct = out is not None and arr.dtype == work
        if direct:
            _check_numpy_out(out, shape, arr.dtype)
            dst = out
        else:
            dst = np.empty(shape, dtype=work)
        ctx = _context(_lib.GS_DEVICE_CPU)
        _lib.check(call(ctx.handle, code, src.ctypes.data, dst.ctypes.data, batch, None))
        if direct:
            return out
        if out is not None:
            _check_numpy_out(out, shape, arr.dtype)
            out[...] = dst
            return out
        return dst.astype(arr.dtype) if arr.dtype != work else dst

    def _execute_torch(self, x, out, slabs, call, trajectory):
        import torch

        codes = _torch_codes(torch)
        x = x.detach()
        shape = (slabs, *x.shape) if trajectory else tuple(x.shape)
        batch = _batch_of(tuple(x.shape), self.dim)
        if x.is_cuda:
            if x.dtype not in codes:
                raise _dtype_error(x.dtype)
            if not x.is_contiguous():
                raise InvalidArgumentError(
                    "invalid argument `x`: CUDA tensors must be contiguous (call .contiguous() "
                    "first; the device path never copies)",
                    2,
                )
            if out is None:
                out = torch.empty(shape, dtype=x.dtype, device=x.device)
            else:
                _check_torch_out(out, shape, x.dtype, x.device)
            ordinal = x.device.index if x.device.index is not None else torch.cuda.current_device()
            ctx = _context(_lib.GS_DEVICE_CUDA, ordinal)
            stream = torch.cuda.current_stream(x.device).cuda_stream
            _lib.check(call(ctx.handle, codes[x.dtype], x.data_ptr(), out.data_ptr(), batch, stream))
            return out
        if x.device.type != "cpu":
            raise InvalidArgumentError(
                f"invalid argument `x`: tensors on {x.device.type} are not supported (CPU or CUDA)", 2
            )
        orig = x.dtype
        if orig == torch.float64:
            x = x.to(torch.float32)
        elif orig not in codes:
            raise _dtype_error(orig)
        src = x.contiguous()
        direct = out is not None and orig == src.dtype
        if direct:
            _check_torch_out(out, shape, orig, src.device)
            dst = out
        else:
            dst = torch.empty(shape, dtype=src.dtype)
        ctx = _context(_lib.GS_DEVICE_CPU)
        _lib.check(call(ctx.handle, codes[src.dtype], src.data_ptr(), dst.data_ptr(), batch, None))
        if direct:
            return out
        if out is not None:
            _check_torch_out(out, shape, orig, src.device)
            out.copy_(dst)
            return out
        return dst.to(orig) if orig != dst.dtype else dst


def _rows(levels: Union[Noise, List[Noise]], batch: int, name: str) -> List[Noise]:
    if isinstance(levels, Noise):
        return [levels] * batch
    if len(levels) != batch:
        raise ShapeMismatchError(
            f"`{name}` has the wrong size: expected {batch} levels (one per row), got {len(levels)}",
            3,
        )
    return levels


def _check_numpy_out(out, shape, dtype) -> None:
    if not isinstance(out, np.ndarray):
        raise InvalidArgumentError(f"invalid argument `out`: expected a NumPy array, got {type(out).__name__}", 2)
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ShapeMismatchError(
            f"`out` has the wrong size: expected shape {tuple(shape)} of {dtype}, got {out.shape} of {out.dtype}", 3
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise InvalidArgumentError("invalid argument `out`: must be C-contiguous and writeable", 2)


def _check_torch_out(out, shape, dtype, device) -> None:
    if not _is_torch(out):
        raise InvalidArgumentError(f"invalid argument `out`: expected a tensor, got {type(out).__name__}", 2)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ShapeMismatchError(
            f"`out` has the wrong size: expected shape {tuple(shape)} of {dtype} on {device}, "
            f"got {tuple(out.shape)} of {out.dtype} on {out.device}",
            3,
        )
    if not out.is_contiguous():
        raise InvalidArgumentError("invalid argument `out`: must be contiguous", 2)


def _metadata(item_shape, value_space: str, source: str, sample_count: int, dim: int) -> Dict[str, str]:
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
