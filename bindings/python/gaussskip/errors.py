"""Exceptions: one class per library status, all derived from :class:`GaussSkipError`.

Each class also derives from the built-in exception a Python user would expect
(``ValueError`` for bad values, ``TypeError`` for an unsupported dtype, ``OSError`` for
files, ``MemoryError``, ``RuntimeError``), so ordinary ``except`` clauses keep working.
"""

from typing import Dict, Type


class GaussSkipError(Exception):
    """A call into libgaussskip failed, or its arguments were rejected before the call.

    Attributes:
        status: the library's ``gs_status`` number (see ``include/gaussskip.h``).
        message: the library's detail (``gs_last_error_message()``) or the binding's own.
    """

    status = 0

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        if status:
            self.status = status


class NullPointerError(GaussSkipError, ValueError):
    status = 1


class InvalidArgumentError(GaussSkipError, ValueError):
    status = 2


class ShapeMismatchError(GaussSkipError, ValueError):
    status = 3


class NonFiniteError(GaussSkipError, ValueError):
    status = 4


class InvalidNoiseError(GaussSkipError, ValueError):
    status = 5


class InvalidModelError(GaussSkipError, ValueError):
    status = 6


class FileIOError(GaussSkipError, OSError):
    status = 7


class FileFormatError(GaussSkipError, ValueError):
    status = 8


class UnsupportedDtypeError(GaussSkipError, TypeError):
    status = 9


class NoCudaError(GaussSkipError, RuntimeError):
    status = 10


class CudaError(GaussSkipError, RuntimeError):
    status = 11


class OutOfMemoryError(GaussSkipError, MemoryError):
    status = 12


class DatasetError(GaussSkipError, ValueError):
    status = 13


class InternalError(GaussSkipError, RuntimeError):
    status = 14


class CallbackError(GaussSkipError, RuntimeError):
    """A caller's callback (the network a calibration evaluates) reported a failure; the
    Python bindings re-raise the callback's own exception instead."""

    status = 15


class LibraryNotFoundError(OSError):
    """libgaussskip could not be found or loaded; the message lists where it looked."""


_BY_STATUS: Dict[int, Type[GaussSkipError]] = {
    cls.status: cls
    for cls in (
        NullPointerError,
        InvalidArgumentError,
        ShapeMismatchError,
        NonFiniteError,
        InvalidNoiseError,
        InvalidModelError,
        FileIOError,
        FileFormatError,
        UnsupportedDtypeError,
        NoCudaError,
        CudaError,
        OutOfMemoryError,
        DatasetError,
        InternalError,
        CallbackError,
    )
}


def error_for_status(status: int, message: str) -> GaussSkipError:
    """The exception instance for a library status (a plain GaussSkipError if unknown)."""
    cls = _BY_STATUS.get(status, GaussSkipError)
    return cls(message, status)
