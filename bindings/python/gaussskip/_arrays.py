"""NumPy arrays and PyTorch tensors in and out of the library's buffers.

The library reads and writes dense row-major rows of float32/float16/bfloat16 and refuses an
output that overlaps its input. Everything else is handled here, with one copy where the
layout needs it: float64 (computed in float32), non-native byte order, non-contiguous input,
an output in another memory format (channels_last) or that aliases the input (``out=x``).
The result has the input's shape, dtype and (for tensors) memory format.
"""

import ctypes
import sys
from math import prod
from typing import Any, Callable, Optional, Tuple

import numpy as np

from . import _lib
from ._context import context
from .errors import InvalidArgumentError, ShapeMismatchError, UnsupportedDtypeError

# call(ctx, dtype_code, x_ptr, out_ptr, batch, stream) -> status
Call = Callable[[Any, int, int, int, int, Optional[int]], int]

_NUMPY_CODES = {np.dtype(np.float32): _lib.GS_DTYPE_F32, np.dtype(np.float16): _lib.GS_DTYPE_F16}


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def batch_of(shape: Tuple[int, ...], dim: int) -> int:
    if len(shape) >= 1 and prod(shape[1:]) == dim:
        return int(shape[0])
    if prod(shape) == dim:
        return 1
    raise ShapeMismatchError(
        f"`x` has the wrong size: expected shape (batch, *item) with {dim} values per item, "
        f"or one item of {dim} values, got shape {tuple(shape)}",
        3,
    )


def _dtype_error(got: Any) -> UnsupportedDtypeError:
    return UnsupportedDtypeError(
        f"unsupported dtype: `x` has dtype {got}; gaussskip takes float32, float16 or bfloat16 "
        "(float64 is computed in float32, other byte orders are converted)",
        9,
    )


# ---- NumPy ----------------------------------------------------------------------------


def _address_via_ctypes(arr: np.ndarray) -> int:
    return arr.ctypes.data


def _address_reader() -> Callable[[np.ndarray], int]:
    """The fastest correct way to read an array's data address.

    ``arr.ctypes.data`` builds a Python object per call (3-7 µs, more than the whole C call on
    a small batch). On CPython the address is the first field after the object header of
    every ndarray (``PyArrayObject_fields.data``, which NumPy's ``PyArray_DATA`` macro reads
    inline in every compiled extension, so NumPy keeps it there); reading it costs 0.3 µs.
    The reader is checked against ``ctypes.data`` once, and other interpreters (where
    ``id`` is not an address) use ``ctypes.data``.
    """
    if sys.implementation.name != "cpython":
        return _address_via_ctypes
    read, offset = ctypes.c_void_p.from_address, object.__basicsize__

    def address(arr: np.ndarray) -> int:
        return read(id(arr) + offset).value or 0

    probe = np.arange(3, dtype=np.float32)[1:]
    return address if address(probe) == probe.ctypes.data else _address_via_ctypes


address = _address_reader()
"""The data address of an ndarray (of any subclass), for the library's pointer arguments."""


def _overlaps_contiguous(a: np.ndarray, a0: int, b: np.ndarray, b0: int) -> bool:
    """Whether two C-contiguous arrays share memory: they fill their byte ranges, so ranges
    that intersect share bytes (np.may_share_memory's answer, without its cost)."""
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def run_numpy(call: Call, dim: int, x: Any, out: Any, slabs: int, trajectory: bool) -> np.ndarray:
    # The common call first: a C-contiguous array in a library dtype and native byte order,
    # without out= or with an out= of the same kind that is writable and apart from x. Any
    # other case (and every error) takes the general path below.
    if type(x) is np.ndarray and x.flags.c_contiguous:
        code = _NUMPY_CODES.get(x.dtype)
        if code is not None:
            batch = batch_of(x.shape, dim)
            shape = (slabs, *x.shape) if trajectory else x.shape
            xp = address(x)
            if out is None:
                dst = np.empty(shape, x.dtype)
            elif type(out) is np.ndarray and out.dtype == x.dtype and out.shape == shape:
                flags = out.flags
                dst = out if flags.c_contiguous and flags.writeable else None
                if dst is not None and _overlaps_contiguous(x, xp, dst, address(dst)):
                    dst = None
            else:
                dst = None
            if dst is not None:
                ctx = context(_lib.GS_DEVICE_CPU)
                status = call(ctx.handle, code, xp, address(dst), batch, None)
                if status:
                    _lib.check(status)
                return dst
    return _run_numpy_general(call, dim, x, out, slabs, trajectory)


def _run_numpy_general(call: Call, dim: int, x: Any, out: Any, slabs: int, trajectory: bool) -> np.ndarray:
    arr = np.asarray(x)
    native = arr.dtype.newbyteorder("=")
    if native == np.float64:
        work = np.dtype(np.float32)
    elif native in _NUMPY_CODES:
        work = native
    else:
        raise _dtype_error(arr.dtype)
    batch = batch_of(arr.shape, dim)
    shape = (slabs, *arr.shape) if trajectory else tuple(arr.shape)
    src = np.ascontiguousarray(arr, dtype=work)
    if out is not None:
        _check_numpy_out(out, shape, native)
        direct = out.dtype == work and out.flags.c_contiguous
        if direct and _overlaps_contiguous(src, address(src), out, address(out)):
            src = src.copy()  # out=x: the library reads and writes different buffers
        dst = out if direct else np.empty(shape, work)
    else:
        dst = np.empty(shape, work)
    ctx = context(_lib.GS_DEVICE_CPU)
    _lib.check(call(ctx.handle, _NUMPY_CODES[work], address(src), address(dst), batch, None))
    if out is not None:
        if dst is not out:
            out[...] = dst
        return out
    return dst if work == native else dst.astype(native)


def _check_numpy_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype) -> None:
    if not isinstance(out, np.ndarray):
        raise InvalidArgumentError(f"invalid argument `out`: expected a NumPy array, got {type(out).__name__}", 2)
    if out.shape != tuple(shape) or out.dtype.newbyteorder("=") != dtype:
        raise ShapeMismatchError(
            f"`out` has the wrong size: expected shape {tuple(shape)} of {dtype}, got {out.shape} of {out.dtype}", 3
        )
    if not out.flags.writeable:
        raise InvalidArgumentError("invalid argument `out`: the array is read-only", 2)


# ---- PyTorch --------------------------------------------------------------------------


_torch_code_table: Optional[dict] = None


def _torch_codes(torch: Any) -> dict:
    global _torch_code_table
    if _torch_code_table is None:
        _torch_code_table = {
            torch.float32: _lib.GS_DTYPE_F32,
            torch.float16: _lib.GS_DTYPE_F16,
            torch.bfloat16: _lib.GS_DTYPE_BF16,
        }
    return _torch_code_table


def _memory_format(torch: Any, x: Any) -> Any:
    """x's memory format when it is not plain contiguous (channels_last), else None."""
    if x.is_contiguous():
        return None
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _overlaps(a: Any, b: Any) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def run_torch(call: Call, dim: int, x: Any, out: Any, slabs: int, trajectory: bool) -> Any:
    """The operation on a tensor (no autograd here: see _autograd). CUDA tensors are read and
    written on ``torch.cuda.current_stream(x.device)`` without any synchronisation."""
    import torch

    codes = _torch_codes(torch)
    # The common CPU call first, as for NumPy: a contiguous tensor (not a subclass, whose
    # new_empty could differ from torch.empty) in a library dtype, without out= or with a
    # contiguous out= of the same dtype apart from x. Other cases (and every error) take the
    # general path below.
    code = codes.get(x.dtype) if type(x) is torch.Tensor else None
    if code is not None and x.device.type == "cpu" and x.is_contiguous():
        batch = batch_of(x.shape, dim)
        shape = (slabs, *x.shape) if trajectory else tuple(x.shape)
        if out is None:
            dst = x.new_empty(shape)  # x's dtype and device, half the time of torch.empty
        elif (
            type(out) is torch.Tensor
            and out.dtype == x.dtype
            and out.shape == shape
            and out.device == x.device
            and out.is_contiguous()
            and not _overlaps(x, out)
        ):
            dst = out
        else:
            dst = None
        if dst is not None:
            status = call(context(_lib.GS_DEVICE_CPU).handle, code, x.data_ptr(), dst.data_ptr(), batch, None)
            if status:
                _lib.check(status)
            return dst
    return _run_torch_general(torch, codes, call, dim, x, out, slabs, trajectory)


def _run_torch_general(torch: Any, codes: dict, call: Call, dim: int, x: Any, out: Any, slabs: int, trajectory: bool) -> Any:
    x = x.detach()
    orig = x.dtype
    if orig == torch.float64:
        work = torch.float32
    elif orig in codes:
        work = orig
    else:
        raise _dtype_error(orig)
    if x.device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(
            f"invalid argument `x`: tensors on {x.device.type} are not supported (CPU or CUDA)", 2
        )
    batch = batch_of(tuple(x.shape), dim)
    shape = (slabs, *x.shape) if trajectory else tuple(x.shape)
    src = x.to(work).contiguous()  # both no-ops for a contiguous tensor of a library dtype
    if out is not None:
        _check_torch_out(torch, out, shape, orig, x.device)
        direct = out.dtype == work and out.is_contiguous()
        if direct and _overlaps(src, out):
            src = src.clone()  # out=x: the library reads and writes different buffers
        dst = out if direct else torch.empty(shape, dtype=work, device=x.device)
    else:
        dst = torch.empty(shape, dtype=work, device=x.device)
    if x.is_cuda:
        ordinal = x.device.index if x.device.index is not None else torch.cuda.current_device()
        ctx = context(_lib.GS_DEVICE_CUDA, ordinal)
        stream = torch.cuda.current_stream(x.device).cuda_stream
    else:
        ctx = context(_lib.GS_DEVICE_CPU)
        stream = None
    _lib.check(call(ctx.handle, codes[work], src.data_ptr(), dst.data_ptr(), batch, stream))
    if out is not None:
        if dst is not out:
            out.copy_(dst)
        return out
    fmt = _memory_format(torch, x)
    if fmt is None:
        return dst if work == orig else dst.to(orig)
    # Keep x's memory format; a trajectory keeps it in every slab.
    flat = (slabs * x.shape[0], *x.shape[1:]) if trajectory else tuple(x.shape)
    res = torch.empty(flat, dtype=orig, device=x.device, memory_format=fmt).view(shape)
    return res.copy_(dst)


def _check_torch_out(torch: Any, out: Any, shape: Tuple[int, ...], dtype: Any, device: Any) -> None:
    if not isinstance(out, torch.Tensor):
        raise InvalidArgumentError(f"invalid argument `out`: expected a tensor, got {type(out).__name__}", 2)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ShapeMismatchError(
            f"`out` has the wrong size: expected shape {tuple(shape)} of {dtype} on {device}, "
            f"got {tuple(out.shape)} of {out.dtype} on {out.device}",
            3,
        )
