"""The fitting half of the C ABI (src/ffi_fit.rs) for :mod:`gaussskip.fit`: ctypes
structures and signatures, and the conversions of batches, options and results."""

import ctypes
import json
from typing import Optional, Tuple

import numpy as np

from . import _lib
from .errors import (
    GaussSkipError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from .model import Model

GS_RESIDUAL_ZERO = 0
GS_RESIDUAL_MEAN = 1
GS_FIT_EXACT = 0
GS_FIT_SKETCH = 1


class _FitMeta(ctypes.Structure):
    """``gs_fit_meta``."""

    _fields_ = [
        ("item_shape", ctypes.POINTER(ctypes.c_size_t)),
        ("item_ndim", ctypes.c_size_t),
        ("value_space", ctypes.c_char_p),
        ("source", ctypes.c_char_p),
    ]


class _SketchInfo(ctypes.Structure):
    """``gs_sketch_info``."""

    _fields_ = [
        ("dim", ctypes.c_size_t),
        ("rank", ctypes.c_size_t),
        ("width", ctypes.c_size_t),
        ("pass_", ctypes.c_uint32),
        ("passes", ctypes.c_uint32),
        ("count", ctypes.c_uint64),
        ("seed", ctypes.c_uint64),
    ]


_declared = False


def _fit_lib() -> ctypes.CDLL:
    """The library with the fitting functions' signatures declared."""
    global _declared
    lib = _lib.load()
    if _declared:
        return lib
    c = ctypes
    vp, sz, u32, u64, i32 = c.c_void_p, c.c_size_t, c.c_uint32, c.c_uint64, c.c_int32
    f32p, f64p, szp = c.POINTER(c.c_float), c.POINTER(c.c_double), c.POINTER(c.c_size_t)
    meta_p = c.POINTER(_FitMeta)
    sigs = {
        "gs_moments_create": (u32, [sz, c.POINTER(vp)]),
        "gs_moments_free": (None, [vp]),
        "gs_moments_add_rows": (u32, [vp, f32p, sz]),
        "gs_moments_add_rows_f64": (u32, [vp, f64p, sz]),
        "gs_moments_merge": (u32, [vp, vp]),
        "gs_moments_count": (u64, [vp]),
        "gs_moments_dim": (sz, [vp]),
        "gs_moments_get": (u32, [vp, f64p, f64p]),
        "gs_moments_export": (u32, [vp, vp, sz, szp]),
        "gs_moments_import": (u32, [vp, sz, c.POINTER(vp)]),
        "gs_moments_fit": (u32, [vp, sz, c.c_double, u32, meta_p, c.POINTER(vp)]),
        "gs_moments_fit_classes": (
            u32,
            [c.POINTER(vp), c.POINTER(c.c_char_p), sz, sz, c.c_double, u32, meta_p, c.POINTER(vp)],
        ),
        "gs_sketch_create": (u32, [sz, sz, sz, u32, u64, c.POINTER(vp)]),
        "gs_sketch_free": (None, [vp]),
        "gs_sketch_add_rows": (u32, [vp, f32p, sz]),
        "gs_sketch_add_rows_f64": (u32, [vp, f64p, sz]),
        "gs_sketch_use_cuda": (u32, [vp, i32]),
        "gs_sketch_add_rows_cuda": (u32, [vp, vp, sz, vp]),
        "gs_sketch_merge": (u32, [vp, vp]),
        "gs_sketch_empty_like": (u32, [vp, c.POINTER(vp)]),
        "gs_sketch_next_pass": (u32, [vp]),
        "gs_sketch_get_info": (u32, [vp, c.POINTER(_SketchInfo)]),
        "gs_sketch_fit": (u32, [vp, sz, c.c_double, u32, meta_p, c.POINTER(vp)]),
        "gs_sketch_export": (u32, [vp, vp, sz, szp]),
        "gs_sketch_import": (u32, [vp, sz, c.POINTER(vp)]),
        "gs_model_metadata": (u32, [vp, c.c_char_p, sz, szp]),
        "gs_fit_choose_method": (u32, [sz, sz, c.POINTER(u32)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _declared = True
    return lib


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def _residual_code(residual: str) -> int:
    if residual == "zero":
        return GS_RESIDUAL_ZERO
    if residual == "mean":
        return GS_RESIDUAL_MEAN
    raise InvalidArgumentError(f"invalid argument `residual`: expected 'zero' or 'mean', got {residual!r}", 2)


def _rank_args(rank: Optional[int], explained: Optional[float]) -> Tuple[int, float]:
    if rank is not None and explained is not None:
        raise InvalidArgumentError("invalid argument `explained`: give a rank or a fraction, not both", 2)
    if rank is not None and (int(rank) != rank or rank < 1):
        raise InvalidArgumentError(f"invalid argument `rank`: must be a whole number >= 1, got {rank!r}", 2)
    if explained is not None and not 0.0 < float(explained) <= 1.0:
        raise InvalidArgumentError(f"invalid argument `explained`: must be in (0, 1], got {explained!r}", 2)
    return (0 if rank is None else int(rank)), (0.0 if explained is None else float(explained))


def _model_from_handle(handle: ctypes.c_void_p) -> Model:
    """Wraps a fitted ``gs_model*`` with the metadata its file would store."""
    lib = _fit_lib()
    n = ctypes.c_size_t(0)
    try:
        _lib.check(lib.gs_model_metadata(handle, None, 0, ctypes.byref(n)))
        buf = ctypes.create_string_buffer(n.value + 1)
        _lib.check(lib.gs_model_metadata(handle, buf, n.value + 1, ctypes.byref(n)))
    except GaussSkipError:
        lib.gs_model_free(handle)
        raise
    return Model(handle, json.loads(buf.value.decode("utf-8")))


def _fit_meta(item_shape: Tuple[int, ...], value_space: str, source: str):
    shape = (ctypes.c_size_t * len(item_shape))(*item_shape)
    meta = _FitMeta(
        ctypes.cast(shape, ctypes.POINTER(ctypes.c_size_t)),
        len(item_shape),
        value_space.encode("utf-8"),
        source.encode("utf-8"),
    )
    return meta, shape  # the shape array must outlive the call


def _export(fn, handle) -> bytes:
    n = ctypes.c_size_t(0)
    _lib.check(fn(handle, None, 0, ctypes.byref(n)))
    buf = ctypes.create_string_buffer(max(n.value, 1))
    _lib.check(fn(handle, buf, n.value, ctypes.byref(n)))
    return buf.raw[: n.value]


class _Rows:
    """One batch as the library takes it: a C-contiguous float32 or float64 host array, or a
    float64 CUDA tensor."""

    def __init__(self, batch, item_shape: Optional[Tuple[int, ...]], *, device_ok: bool):
        self.cuda = None
        if _is_torch(batch):
            t = batch.detach()
            if t.ndim == 0:
                raise ShapeMismatchError("`batch` has the wrong size: expected shape (n, *item), got a scalar", 3)
            if t.is_cuda and device_ok:
                import torch

                self.shape = tuple(t.shape)
                self.cuda = t.to(torch.float64).contiguous()
                self.device = t.device
                self.array = None
            else:
                import torch

                # NumPy has no bfloat16.
                batch = (t.to(torch.float64) if t.dtype == torch.bfloat16 else t).cpu().numpy()
        if self.cuda is None:
            a = np.asarray(batch)
            if a.ndim == 0:
                raise ShapeMismatchError("`batch` has the wrong size: expected shape (n, *item), got a scalar", 3)
            if a.dtype.kind not in "biuf":
                raise UnsupportedDtypeError(f"unsupported dtype: batch of dtype {a.dtype}; expected numbers", 9)
            work = np.float32 if a.dtype in (np.float32, np.float16) else np.float64
            self.array = np.ascontiguousarray(a, dtype=work)
            self.shape = a.shape
        self.rows = int(self.shape[0])
        self.item = tuple(int(s) for s in self.shape[1:]) or (1,)
        if item_shape is not None and self.item != item_shape:
            raise ShapeMismatchError(
                f"`batch` has the wrong size: items of shape {self.item}, earlier ones {item_shape}", 3
            )

    def first_bad_row(self) -> int:
        flat = self.array.reshape(self.rows, -1)
        return int(np.nonzero(~np.isfinite(flat).all(axis=1))[0][0])

    def add_host(self, fn32, fn64, handle) -> None:
        a = self.array
        try:
            if a.dtype == np.float32:
                _lib.check(fn32(handle, a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), self.rows))
            else:
                _lib.check(fn64(handle, a.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), self.rows))
        except NonFiniteError:
            raise NonFiniteError(f"row {self.first_bad_row()} of the batch holds NaN or Inf (nothing was added)", 4) from None
