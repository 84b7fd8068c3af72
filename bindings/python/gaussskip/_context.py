"""Library contexts (one for the CPU, one per CUDA device), shared by every model, and the
parsing of ``device=`` arguments."""

import ctypes
import sys
import threading
import weakref
from typing import Any, Dict, Optional, Tuple, Union

from . import _lib
from .errors import InvalidArgumentError


class Context:
    """A library context (CPU, or one CUDA device), freed with the object."""

    def __init__(self, device: int, ordinal: int):
        lib = _lib.load()
        handle = ctypes.c_void_p()
        _lib.check(lib.gs_context_create(device, ordinal, ctypes.byref(handle)))
        self.handle = handle
        self._finalizer = weakref.finalize(self, lib.gs_context_free, handle)


_contexts: Dict[Tuple[int, int], Context] = {}
_contexts_lock = threading.Lock()


def context(device: int, ordinal: int = 0) -> Context:
    """The shared context of a device (created on first use)."""
    key = (device, ordinal)
    ctx = _contexts.get(key)
    if ctx is None:
        with _contexts_lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = Context(device, ordinal)
                _contexts[key] = ctx
    return ctx


DeviceLike = Union[str, int, Any]
"""``"cpu"``, ``"cuda"``, ``"cuda:N"``, a CUDA ordinal ``N``, or a ``torch.device``."""


def parse_device(device: DeviceLike) -> Tuple[int, int]:
    """(GS_DEVICE_CPU or GS_DEVICE_CUDA, ordinal) of a ``device=`` argument; a bare
    ``"cuda"`` means PyTorch's current CUDA device when PyTorch is loaded, else device 0."""
    if isinstance(device, bool):
        raise InvalidArgumentError(f"invalid argument `device`: expected a device, got {device!r}", 2)
    index: Optional[int]
    if isinstance(device, int):
        kind, index = "cuda", device
    else:
        text = str(device)
        kind, _, idx = text.partition(":")
        try:
            index = int(idx) if idx else None
        except ValueError:
            index = -1
        if kind not in ("cpu", "cuda") or (kind == "cpu" and index not in (None, 0)):
            raise InvalidArgumentError(
                f"invalid argument `device`: expected 'cpu', 'cuda', 'cuda:N', an ordinal or a "
                f"torch.device, got {device!r}",
                2,
            )
    if kind == "cpu":
        return _lib.GS_DEVICE_CPU, 0
    if index is None:
        torch = sys.modules.get("torch")
        index = torch.cuda.current_device() if torch is not None and torch.cuda.is_available() else 0
    if index < 0:
        raise InvalidArgumentError(f"invalid argument `device`: the CUDA ordinal must be >= 0, got {device!r}", 2)
    return _lib.GS_DEVICE_CUDA, index


def stream_handle(stream: Any, ordinal: int) -> Optional[int]:
    """The CUstream to pass: ``stream`` itself (a torch.cuda.Stream or a raw handle), else
    PyTorch's current stream on that device when PyTorch is loaded, else the default stream."""
    if stream is not None:
        return int(getattr(stream, "cuda_stream", stream))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.current_stream(ordinal).cuda_stream or None
    return None
