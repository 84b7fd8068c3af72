"""Finding and loading libgaussskip, and the ctypes signatures of its C ABI.

Search order (the first existing file wins):
1. the environment variable ``GAUSSSKIP_LIB`` (a path to the shared library), to try another
   build of the library;
2. this package's folder, where ``pip install`` puts the library it built
   (``libgaussskip.abi3.so`` in a wheel, or any ``libgaussskip*`` file);
3. for a source checkout used without installing (``PYTHONPATH=bindings/python``): cargo's
   output folders ``$CARGO_TARGET_DIR/{release,debug}``, then ``target/release`` and
   ``target/debug`` in the folders above this package. The current directory plays no part.

The library is loaded on first use, so the pure-NumPy parts (noise helpers) work without
it.
"""

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .errors import LibraryNotFoundError, error_for_status

#: The C ABI version these bindings were written for (``GS_ABI_VERSION``).
ABI_VERSION = 1

GS_DTYPE_F32 = 0
GS_DTYPE_F16 = 1
GS_DTYPE_BF16 = 2

GS_DEVICE_AUTO = 0
GS_DEVICE_CPU = 1
GS_DEVICE_CUDA = 2

if sys.platform == "darwin":
    LIB_NAME = "libgaussskip.dylib"
elif sys.platform == "win32":
    LIB_NAME = "gaussskip.dll"
else:
    LIB_NAME = "libgaussskip.so"

BUILD_HINT = (
    "install the package with `pip install ./bindings/python` from the gaussskip repository "
    "(it builds the library into the package), or build it with `cargo build --release` and "
    "set GAUSSSKIP_LIB"
)
_SUFFIXES = (".so", ".dylib", ".dll", ".pyd")


class GsNoise(ctypes.Structure):
    """``gs_noise``: x_t = alpha * x0 + sigma * eps."""

    _fields_ = [("alpha", ctypes.c_double), ("sigma", ctypes.c_double)]


def _bundled(folder: Path) -> List[Path]:
    """Libraries inside the package folder (the name carries setuptools' suffix)."""
    found = [p for p in folder.glob("libgaussskip*") if p.suffix in _SUFFIXES]
    return sorted(found) or [folder / LIB_NAME]


def candidate_paths() -> List[Path]:
    """Every path the loader tries, in order (existing or not)."""
    out: List[Path] = []
    env = os.environ.get("GAUSSSKIP_LIB")
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out += _bundled(here)
    target_env = os.environ.get("CARGO_TARGET_DIR")
    if target_env:
        out += [Path(target_env) / "release" / LIB_NAME, Path(target_env) / "debug" / LIB_NAME]
    for folder in here.parents:
        out += [folder / "target" / "release" / LIB_NAME, folder / "target" / "debug" / LIB_NAME]
    seen = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    vp, sz, u32, i32 = c.c_void_p, c.c_size_t, c.c_uint32, c.c_int32
    noise_p = c.POINTER(GsNoise)
    f32p, f64p = c.POINTER(c.c_float), c.POINTER(c.c_double)
    u32p = c.POINTER(c.c_uint32)
    sigs = {
        "gs_version": (c.c_char_p, []),
        "gs_abi_version": (u32, []),
        "gs_status_message": (c.c_char_p, [u32]),
        "gs_last_error_message": (c.c_char_p, []),
        "gs_model_load": (u32, [c.c_char_p, c.POINTER(vp)]),
        "gs_model_from_parts": (u32, [sz, sz, f32p, f32p, f32p, c.c_float, c.POINTER(vp)]),
        "gs_model_save": (u32, [vp, c.c_char_p]),
        "gs_model_free": (None, [vp]),
        "gs_model_dim": (sz, [vp]),
        "gs_model_rank": (sz, [vp]),
        "gs_model_get_parts": (u32, [vp, f32p, f64p, f32p, f64p]),
        "gs_context_create": (u32, [u32, i32, c.POINTER(vp)]),
        "gs_context_free": (None, [vp]),
        "gs_context_device": (u32, [vp]),
        "gs_skip": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, GsNoise, vp]),
        "gs_skip_rows": (u32, [vp, vp, u32, vp, vp, sz, noise_p, noise_p, vp]),
        "gs_denoise": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, vp]),
        "gs_denoise_rows": (u32, [vp, vp, u32, vp, vp, sz, noise_p, vp]),
        "gs_skip_trajectory": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, noise_p, sz, vp]),
        "gs_x0_trajectory": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, noise_p, sz, vp]),
        "gs_skip_component": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, GsNoise, u32p, vp]),
        "gs_skip_rows_component": (u32, [vp, vp, u32, vp, vp, sz, noise_p, noise_p, u32p, vp]),
        "gs_denoise_component": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, u32p, vp]),
        "gs_denoise_rows_component": (u32, [vp, vp, u32, vp, vp, sz, noise_p, u32p, vp]),
        "gs_skip_trajectory_component": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, noise_p, sz, u32p, vp]),
        "gs_x0_trajectory_component": (u32, [vp, vp, u32, vp, vp, sz, GsNoise, noise_p, sz, u32p, vp]),
        "gs_model_n_components": (u32, [vp, c.POINTER(sz)]),
        "gs_model_component": (u32, [vp, sz, c.POINTER(vp)]),
        "gs_model_component_info": (u32, [vp, sz, c.c_char_p, sz, c.POINTER(sz), c.POINTER(c.c_uint64)]),
        "gs_model_from_components": (u32, [c.POINTER(vp), c.POINTER(c.c_char_p), sz, c.POINTER(vp)]),
        "gs_context_prepare": (u32, [vp, vp, sz, sz, vp]),
        "gs_context_release_model": (u32, [vp, vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[Path] = None


def load() -> ctypes.CDLL:
    """The loaded library (loads it on the first call).

    Raises:
        LibraryNotFoundError: no candidate exists, or one exists but cannot be loaded or has
            another ABI version; the message lists every path tried and how to build it.
    """
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = candidate_paths()
        failures = []
        for path in tried:
            if not path.is_file():
                continue
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
            except (OSError, AttributeError) as e:
                failures.append(f"  {path}: {e}")
                continue
            abi = lib.gs_abi_version()
            if abi != ABI_VERSION:
                failures.append(
                    f"  {path}: C ABI version {abi}, these bindings need {ABI_VERSION}"
                )
                continue
            _lib, _lib_path = lib, path
            return lib
        listing = "\n".join(f"  {p}" for p in tried)
        extra = ("\nfound but unusable:\n" + "\n".join(failures)) if failures else ""
        raise LibraryNotFoundError(
            f"cannot find {LIB_NAME}; looked in (GAUSSSKIP_LIB, the package folder, "
            f"cargo target folders above the package):\n{listing}{extra}\n{BUILD_HINT}="
            f"/path/to/target/release/{LIB_NAME}"
        )


def library_path() -> Path:
    """Path of the loaded library (loads it if needed)."""
    load()
    assert _lib_path is not None
    return _lib_path


def check(status: int) -> None:
    """Raises the exception of a failed call with the library's message for this thread."""
    if status == 0:
        return
    lib = load()
    detail = lib.gs_last_error_message() or b""
    text = detail.decode("utf-8", "replace")
    if not text:
        text = (lib.gs_status_message(status) or b"").decode("utf-8", "replace")
    raise error_for_status(status, text)
