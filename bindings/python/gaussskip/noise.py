"""Noise levels of an affine forward process x_t = alpha * x0 + sigma * eps (SPEC §3).

Wherever a level is expected, a plain number means an EDM sigma (alpha = 1); use
:func:`vp` or :func:`flow` for other parameterisations. A sequence of levels (or a 1-D
array of EDM sigmas) of batch length gives one level per row.
"""

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, List, Sequence, Union, overload

import numpy as np

from .errors import InvalidArgumentError, ShapeMismatchError


@dataclass(frozen=True)
class Noise:
    """One noise level: x_t = alpha * x0 + sigma * eps (alpha, sigma >= 0, finite).

    The library validates the values (negative or non-finite ones raise
    :class:`~gaussskip.InvalidNoiseError` when used), so a Noise may be built freely.
    """

    alpha: float
    sigma: float

    @property
    def edm_sigma(self) -> float:
        """The equivalent EDM noise level sigma / alpha (inf for pure noise)."""
        return self.sigma / self.alpha if self.alpha != 0 else math.inf


LevelLike = Union[Noise, float, int]


def _map(fn: Any, value: Any) -> Any:
    if isinstance(value, Real) or np.ndim(value) == 0:
        return fn(float(value))
    return [fn(float(v)) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


@overload
def edm(sigma: float) -> Noise: ...
@overload
def edm(sigma: Union[Sequence[float], np.ndarray]) -> List[Noise]: ...


def edm(sigma: Any) -> Union[Noise, List[Noise]]:
    """EDM / VE / k-diffusion level: alpha = 1. An array gives a list (one level per row)."""
    return _map(lambda s: Noise(1.0, s), sigma)


@overload
def vp(alpha_bar: float) -> Noise: ...
@overload
def vp(alpha_bar: Union[Sequence[float], np.ndarray]) -> List[Noise]: ...


def vp(alpha_bar: Any) -> Union[Noise, List[Noise]]:
    """VP (DDPM/DDIM/DPM-Solver) level from alpha_bar: alpha = sqrt(alpha_bar),
    sigma = sqrt(1 - alpha_bar). An array gives a list."""

    def one(a: float) -> Noise:
        # Out-of-range alpha_bar gives NaN, which the library rejects with its message.
        return Noise(math.sqrt(a) if a >= 0 else math.nan, math.sqrt(1 - a) if a <= 1 else math.nan)

    return _map(one, alpha_bar)


@overload
def flow(t: float) -> Noise: ...
@overload
def flow(t: Union[Sequence[float], np.ndarray]) -> List[Noise]: ...


def flow(t: Any) -> Union[Noise, List[Noise]]:
    """Rectified-flow / flow-matching level (SD3, Flux): alpha = 1 - t, sigma = t."""
    return _map(lambda s: Noise(1.0 - s, s), t)


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """The Karras et al. (EDM) schedule: ``n`` sigmas from sigma_max down to sigma_min, then 0.

    Same values as k-diffusion's ``get_sigmas_karras`` and the ``t_steps`` of EDM's
    ``edm_sampler`` (float64, length n + 1).
    """
    if n < 1:
        raise ValueError(f"karras_sigmas: need n >= 1, got {n}")
    if not (0 < sigma_min <= sigma_max < math.inf):
        raise ValueError(f"karras_sigmas: need 0 < sigma_min <= sigma_max < inf, got {sigma_min}, {sigma_max}")
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    out = (hi + ramp * (lo - hi)) ** rho
    return np.append(out, 0.0)


def _grad_check(value, name: str) -> None:
    """Levels are constants for autograd: refuse a tensor that would need a gradient rather
    than drop it silently."""
    if getattr(value, "requires_grad", False):
        import torch

        if torch.is_grad_enabled():
            raise InvalidArgumentError(
                f"invalid argument `{name}`: gradients with respect to noise levels are not "
                f"supported; pass `{name}.detach()` (gradients flow to `x` only)",
                2,
            )


def _numbers(value, name: str) -> np.ndarray:
    """A float64 array of EDM sigmas from a tensor, an array or a sequence of numbers."""
    if hasattr(value, "detach") and hasattr(value, "dtype"):  # a torch tensor
        _grad_check(value, name)
        # .cpu() synchronises a CUDA tensor: give Python floats inside CUDA graph capture.
        value = value.detach().cpu().double().numpy()
    try:
        # (np.asarray would read "80" as a number)
        text = isinstance(value, (str, bytes)) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, (str, bytes)) for v in value)
        )
        arr = None if text else np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype == object:
        raise TypeError(
            f"`{name}` must be a noise level (gaussskip.Noise or a number meaning EDM sigma), a "
            f"sequence of them of batch length, or an array/tensor of EDM sigmas, got "
            f"{_describe(value)}"
        )
    return arr


def _describe(value) -> str:
    if isinstance(value, (list, tuple)) and value:
        inner = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(inner)}"
    return type(value).__name__


def as_levels(value, name: str) -> Union[Noise, List[Noise]]:
    """One level for all rows, or a list of per-row levels.

    Accepts a :class:`Noise`; a number (EDM sigma); a sequence of Noise/numbers; or an
    array/tensor of EDM sigmas of shape ``()``, ``(1,)``, ``(1, ..., 1)`` (one level for
    all rows) or ``(batch,)``, ``(batch, 1, ..., 1)`` (one per row: the shapes that
    broadcast against ``x`` in PyTorch code, e.g. ``sigma[:, None, None, None]``).
    """
    levels = level_rows(value, name)
    if isinstance(levels, np.ndarray):
        return [Noise(1.0, float(v)) for v in levels]
    return levels


def level_rows(value, name: str) -> Union[Noise, List[Noise], np.ndarray]:
    """:func:`as_levels`, with per-row EDM sigmas left as a 1-D float64 array (the model's
    calls lay them out for the library without a Noise object per row)."""
    if isinstance(value, Noise):
        return value
    if isinstance(value, Real):
        return Noise(1.0, float(value))
    if isinstance(value, (list, tuple)) and any(isinstance(v, Noise) for v in value):
        return [v if isinstance(v, Noise) else as_level(v, name) for v in value]
    arr = _numbers(value, name)
    if arr.size == 1:
        return Noise(1.0, float(arr.reshape(())))
    if arr.ndim == 0 or arr.size == 0 or (arr.ndim > 1 and any(n != 1 for n in arr.shape[1:])):
        raise ShapeMismatchError(
            f"`{name}` has the wrong size: levels must be one value, or one per row with shape "
            f"(batch,) or (batch, 1, ..., 1), got shape {arr.shape}",
            3,
        )
    return arr.reshape(-1).copy()  # a snapshot: autograd's backward reads the levels later


def as_level(value, name: str) -> Noise:
    """Exactly one level (Noise, number, or a one-element array/tensor)."""
    levels = as_levels(value, name)
    if isinstance(levels, Noise):
        return levels
    raise InvalidArgumentError(
        f"invalid argument `{name}`: expected one noise level, got {len(levels)}", 2
    )


def as_level_list(value, name: str) -> List[Noise]:
    """A list of levels (trajectory levels): a sequence, or an array/tensor of any shape
    holding EDM sigmas (flattened)."""
    if isinstance(value, Noise) or isinstance(value, Real):
        return [as_levels(value, name)]  # type: ignore[list-item]
    if isinstance(value, (list, tuple)) and any(isinstance(v, Noise) for v in value):
        return [v if isinstance(v, Noise) else as_level(v, name) for v in value]
    return [Noise(1.0, float(v)) for v in _numbers(value, name).reshape(-1)]


Levels = Union[LevelLike, Sequence[LevelLike], np.ndarray, Any]
"""A noise level, a sequence of them, or an array/tensor of EDM sigmas (see :func:`as_levels`)."""
