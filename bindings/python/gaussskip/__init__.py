"""gaussskip: skip the first steps of diffusion sampling with the exact probability-flow ODE
map of a Gaussian fitted to the data.

    import gaussskip as gs
    model = gs.Model.load("cifar10.safetensors")
    x = model.skip(x, 80.0, 19.4)            # EDM sigmas; gs.vp(...), gs.flow(...) for others

Python bindings over libgaussskip's C ABI (ctypes); ``pip install`` builds the library into
the package (``GAUSSSKIP_LIB`` points to another build: see ``gaussskip._lib``).
"""

from . import integrations
from .calibrate import Calibration, calibrate, calibrated_k, x0_denoiser
from ._lib import ABI_VERSION, library_path
from .errors import (
    CallbackError,
    CudaError,
    DatasetError,
    FileFormatError,
    FileIOError,
    GaussSkipError,
    InternalError,
    InvalidArgumentError,
    InvalidModelError,
    InvalidNoiseError,
    LibraryNotFoundError,
    NoCudaError,
    NonFiniteError,
    NullPointerError,
    OutOfMemoryError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from .fit import Moments, Sketch, fit
from .integrations import choose_skip, diffusers_pipeline_skip, diffusers_skip, edm_sampler_skip, kdiffusion_skip
from .model import Model
from .noise import Noise, edm, flow, karras_sigmas, vp

__version__ = "0.1.0"


def library_version() -> str:
    """Version of the loaded libgaussskip (loads it if needed)."""
    from . import _lib

    return _lib.load().gs_version().decode()


__all__ = [
    "ABI_VERSION",
    "Calibration",
    "CudaError",
    "DatasetError",
    "FileFormatError",
    "FileIOError",
    "GaussSkipError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidModelError",
    "CallbackError",
    "InvalidNoiseError",
    "LibraryNotFoundError",
    "Model",
    "Moments",
    "NoCudaError",
    "Noise",
    "NonFiniteError",
    "NullPointerError",
    "OutOfMemoryError",
    "ShapeMismatchError",
    "Sketch",
    "calibrate",
    "calibrated_k",
    "UnsupportedDtypeError",
    "choose_skip",
    "diffusers_pipeline_skip",
    "diffusers_skip",
    "edm",
    "edm_sampler_skip",
    "fit",
    "flow",
    "integrations",
    "karras_sigmas",
    "kdiffusion_skip",
    "library_path",
    "library_version",
    "vp",
    "x0_denoiser",
]
