"""Noise levels of an affine forward process x_t = alpha * x0 + sigma * eps (SPEC §3).

Wherever a level is expected, a plain number means an EDM sigma (alpha = 1); use
:func:`vp` or :func:`flow` for other parameterisations. A sequence of levels (or a 1-D
array of EDM sigmas) of batch length gives one level per row.
"""

import math
from dataclasses import dataclass
from numbers import Real
from typing import List, Sequence, Union

import numpy as np


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


def _map(fn, value):
    if isinstance(value, Real) or np.ndim(value) == 0:
        return fn(float(value))
    return [fn(float(v)) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def edm(sigma) -> Union[Noise, List[Noise]]:
    """EDM / VE / k-diffusion level: alpha = 1. An array gives a list (one level per row)."""
    return _map(lambda s: Noise(1.0, s), sigma)


def vp(alpha_bar) -> Union[Noise, List[Noise]]:
    """VP (DDPM/DDIM/DPM-Solver) level from alpha_bar: alpha = sqrt(alpha_bar),
    sigma = sqrt(1 - alpha_bar). An array gives a list."""

    def one(a: float) -> Noise:
        # Out-of-range alpha_bar gives NaN, which the library rejects with its message.
        return Noise(math.sqrt(a) if a >= 0 else math.nan, math.sqrt(1 - a) if a <= 1 else math.nan)

    return _map(one, alpha_bar)


def flow(t) -> Union[Noise, List[Noise]]:
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


def as_level(value, name: str) -> Noise:
    """One level from a Noise, a number (EDM sigma) or a 0-d array/tensor."""
    if isinstance(value, Noise):
        return value
    if isinstance(value, Real):
        return Noise(1.0, float(value))
    if hasattr(value, "detach") and getattr(value, "ndim", None) == 0:
        return Noise(1.0, float(value.item()))
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return Noise(1.0, float(value))
    raise TypeError(
        f"`{name}` must be a noise level (gaussskip.Noise or a number meaning EDM sigma), got {type(value).__name__}"
    )


def as_levels(value, name: str) -> Union[Noise, List[Noise]]:
    """A single level, or a list of levels from a sequence / 1-D array / 1-D tensor."""
    try:
        return as_level(value, name)
    except TypeError:
        pass
    if hasattr(value, "detach"):  # a torch tensor: .tolist() (synchronises a CUDA tensor)
        value = value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise TypeError(f"`{name}`: per-row levels must be 1-D, got shape {value.shape}")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [as_level(v, name) for v in value]
    raise TypeError(
        f"`{name}` must be a noise level (gaussskip.Noise or a number meaning EDM sigma) or a "
        f"sequence of them of batch length, got {type(value).__name__}"
    )


def as_level_list(value, name: str) -> List[Noise]:
    """A non-empty list of levels (trajectory levels)."""
    levels = as_levels(value, name)
    if isinstance(levels, Noise):
        return [levels]
    return levels


Levels = Union[LevelLike, Sequence[LevelLike]]
