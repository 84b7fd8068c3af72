"""Calibrating the hand-off on your own network: how many steps may the jump replace?

    cal = gs.calibrate(model, denoiser, sigmas, x_T)      # x_T = sigmas[0] * noise, 8-32 rows
    print(cal)                                            # the table, the choice, the cost
    x, rest = gs.kdiffusion_skip(model, x, sigmas, k="auto")

The library (``gs_calibrate``) runs the schedule once without a jump, once with twice the
steps, and for k = 1, 2, ... the jump to ``sigmas[k]`` plus the remaining steps. The default
rule is decided at the hand-off: the two runs give (Richardson extrapolation) the exact
state at ``sigmas[k]`` and the sampler's own error there; candidate k is within when the jump
lands no further from the exact state than 2^(p-1) times the sampler's own error there, p
the sampler's order (Euler/DDIM 1x, Heun 2x: half the error of the same sampler with half
the steps). These errors are averages over every draw and pixel, so 8-32 draws measure them
stably. ``cal.k`` is the largest k with every candidate up to it within; the final-sample
change against the run without a jump is measured and reported for each candidate. The model then holds the
calibration in its metadata (``model.save`` keeps it), keyed by sampler and schedule, and the
integration helpers accept ``k="auto"``.

The denoiser is your network as an x0-predictor, called as ``denoiser(x, sigma)``:

* on an EDM schedule (``sigmas``: decreasing numbers ending in 0, k-diffusion's convention),
  ``sigma`` is a tensor/array of shape ``(batch,)``, as k-diffusion's samplers call a model;
* on VP or flow levels (``sigmas``: a list of :class:`gaussskip.Noise` from :func:`gs.vp` or
  :func:`gs.flow`), ``x`` is in the schedule's own space and ``sigma`` is the
  :class:`gaussskip.Noise` level.

:func:`x0_denoiser` turns an epsilon-, v- or flow-predicting network into that x0-predictor.
``x`` reaches the denoiser as a torch tensor on ``device`` (and dtype) of ``x_T`` when
``x_T`` is a tensor, else as a float32 NumPy array.
"""

import ctypes
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _lib
from ._context import DeviceLike, context, parse_device
from .errors import InvalidArgumentError
from .model import Model
from .noise import Noise

GS_SAMPLER_HEUN = 0
GS_SAMPLER_EULER = 1
GS_TOLERANCE_STEP_COUNT = 0
GS_TOLERANCE_RMS = 1

_SAMPLERS = {"heun": GS_SAMPLER_HEUN, "euler": GS_SAMPLER_EULER, "ddim": GS_SAMPLER_EULER}

_DenoiseFn = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_size_t,
    ctypes.c_size_t,
    _lib.GsNoise,
    ctypes.POINTER(ctypes.c_float),
)


class _Options(ctypes.Structure):
    _fields_ = [
        ("sampler", ctypes.c_uint32),
        ("tolerance_rule", ctypes.c_uint32),
        ("tolerance", ctypes.c_double),
        ("max_k", ctypes.c_size_t),
        ("full_table", ctypes.c_int),
        ("reference", ctypes.POINTER(ctypes.c_float)),
        ("reference_items", ctypes.c_size_t),
    ]


_declared = False


def _cal_lib() -> ctypes.CDLL:
    """The library with the calibration functions' signatures declared."""
    global _declared
    lib = _lib.load()
    if _declared:
        return lib
    c = ctypes
    vp, sz, u32 = c.c_void_p, c.c_size_t, c.c_uint32
    noise_p = c.POINTER(_lib.GsNoise)
    sigs = {
        "gs_calibrate": (
            u32,
            [vp, vp, _DenoiseFn, vp, noise_p, sz, c.POINTER(c.c_float), sz, c.POINTER(_Options), c.POINTER(vp)],
        ),
        "gs_calibration_free": (None, [vp]),
        "gs_calibration_k": (sz, [vp]),
        "gs_calibration_json": (u32, [vp, c.c_char_p, sz, c.POINTER(sz)]),
        "gs_model_with_calibration": (u32, [vp, vp, c.POINTER(vp)]),
        "gs_model_calibrated_k": (u32, [vp, u32, noise_p, sz, c.POINTER(sz)]),
        "gs_model_metadata": (u32, [vp, c.c_char_p, sz, c.POINTER(sz)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _declared = True
    return lib


@dataclass(frozen=True)
class Candidate:
    """One row of :attr:`Calibration.table`: the run that jumps over the first ``k`` steps."""

    k: int
    sigma: float
    """EDM sigma (sigma / alpha) where the sampler resumes."""
    nfe_saved: int
    rms_change: Optional[float]
    """RMS of the final samples against the run without a jump (always measured here)."""
    state_change: float
    """RMS of the jumped state against the reference trajectory at the hand-off."""
    jump_error: Optional[float]
    """RMS of the jumped state against the exact state at the hand-off (extrapolated from the
    runs with 1x and 2x the steps; None with a fixed tolerance)."""
    sampler_error: Optional[float]
    """RMS of the run without a jump against the exact state at the hand-off: the sampler's own
    error there (None with a fixed tolerance)."""
    denoiser_gap: float
    """RMS of the network's minus the Gaussian's x0-prediction on the reference trajectory
    at the hand-off."""
    same_nearest: Optional[int]
    """With ``reference=``: final samples nearest the same reference item as without the jump."""
    within: bool


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured and chose (``str()`` prints the table)."""

    k: int
    """The largest k whose candidates 1..k all stay within the tolerance (0: do not jump)."""
    sampler: str
    levels: List[Noise]
    tolerance: float
    """``"hand-off"``: the largest accepted ratio ``jump_error / sampler_error``; ``"fixed"``: the
    largest final-sample RMS change."""
    tolerance_rule: str
    """``"hand-off"`` (the default) or ``"fixed"``."""
    step_error: Optional[float]
    """RMS of the final samples against the run with twice the steps (with the default rule)."""
    batch: int
    nfe_full: int
    """Network evaluations of one run without a jump."""
    nfe: int
    """Network evaluations (each on the whole batch) the calibration spent."""
    cost: Dict[str, int]
    """``nfe`` split into ``reference``, ``step_check`` and ``candidates``."""
    denoiser_gap: List[float]
    table: List[Candidate]

    @property
    def sigmas(self) -> List[float]:
        """The EDM sigmas (sigma / alpha) of the schedule."""
        return [n.edm_sigma for n in self.levels]

    def __str__(self) -> str:
        rows = ["   k  sigma at hand-off  NFE saved  jump error  sampler error  final RMS change  denoiser gap"]
        for c in self.table:
            mark = "  <- k" if c.k == self.k else ""
            near = f"  {c.same_nearest}/{self.batch} same nearest" if c.same_nearest is not None else ""
            jump, own, final = ("-" if v is None else f"{v:.3g}" for v in (c.jump_error, c.sampler_error, c.rms_change))
            rows.append(
                f"{c.k:>4}  {c.sigma:>17.4g}  {c.nfe_saved:>9}  {jump:>10}  {own:>13}  {final:>16}"
                f"  {c.denoiser_gap:>12.3g}  {'ok' if c.within else 'beyond'}{near}{mark}"
            )
        rows.append(
            f"calibrated k = {self.k} ({self.sampler}, {len(self.levels) - 1} steps; tolerance "
            f"{self.tolerance:.3g}, {self.tolerance_rule}); cost {self.nfe} network evaluations "
            f"on a batch of {self.batch}"
        )
        return "\n".join(rows)


def _parse(text: str) -> Calibration:
    v = json.loads(text)
    table = [
        Candidate(
            k=c["k"],
            sigma=c["sigma"],
            nfe_saved=c["nfe_saved"],
            rms_change=c.get("rms_change"),
            state_change=c["state_change"],
            jump_error=c.get("jump_error"),
            sampler_error=c.get("sampler_error"),
            denoiser_gap=c["denoiser_gap"],
            same_nearest=c.get("same_nearest"),
            within=c["within"],
        )
        for c in v["candidates"]
    ]
    return Calibration(
        k=v["k"],
        sampler=v["sampler"],
        levels=[Noise(a, s) for a, s in v["levels"]],
        tolerance=v["tolerance"],
        tolerance_rule=v["tolerance_rule"],
        step_error=v.get("step_error"),
        batch=v["batch"],
        nfe_full=v["nfe_full"],
        nfe=v["cost"]["total"],
        cost=dict(v["cost"]),
        denoiser_gap=list(v["denoiser_gap"]),
        table=table,
    )


def _floats(values: Any) -> List[float]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def schedule_levels(sigmas: Any) -> List[Noise]:
    """The levels of a schedule: EDM sigmas (numbers, a NumPy array or a tensor) as
    ``Noise(1, sigma)``, or a sequence of :class:`Noise` (from :func:`gs.vp`, :func:`gs.flow`)
    as given."""
    if isinstance(sigmas, (list, tuple)) and sigmas and all(isinstance(n, Noise) for n in sigmas):
        return list(sigmas)
    return [Noise(1.0, s) for s in _floats(sigmas)]


def _sampler_code(sampler: str) -> int:
    code = _SAMPLERS.get(str(sampler).lower())
    if code is None:
        raise InvalidArgumentError(f"invalid argument `sampler`: expected 'heun', 'euler' or 'ddim', got {sampler!r}", 2)
    return code


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def calibrate(
    model: Model,
    denoiser: Callable[[Any, Any], Any],
    sigmas: Any,
    x_T: Any,
    *,
    sampler: str = "heun",
    tolerance: Optional[float] = None,
    max_k: Optional[int] = None,
    full_table: bool = False,
    reference: Any = None,
    device: DeviceLike = "cpu",
    store: bool = True,
    progress: bool = False,
) -> Calibration:
    """Calibrates the hand-off of ``sampler`` on ``sigmas`` for your network (see the module
    documentation) and, with ``store=True``, keeps the result in ``model``'s metadata.

    Args:
        model: the Gaussian model that will jump.
        denoiser: ``denoiser(x, sigma) -> x0`` (k-diffusion's convention; see
            :func:`x0_denoiser` for epsilon, v and flow networks).
        sigmas: the schedule you sample with: EDM sigmas ending in 0, or VP / flow levels
            (a list of :class:`Noise`, e.g. ``gs.vp(alphas_cumprod[timesteps])`` + the clean
            level).
        x_T: calibration noise at the first level, shape ``(batch, *item)``, 8 to 32 rows
            (``sigmas[0] * torch.randn(...)``; for flow levels starting at t = 1, unit noise).
        sampler: ``"heun"`` (EDM sigmas only) or ``"euler"`` (``"ddim"`` is the same on VP
            levels; flow-matching Euler on flow levels).
        tolerance: a fixed final-sample RMS in the data's units instead of the default rule
            (the jump's error at the hand-off at most 2^(p-1) times the sampler's own, p its
            order; costs one run with twice the steps).
        max_k: the largest k to try (default: every k that leaves one step).
        full_table: measure every k up to ``max_k`` instead of stopping after the first one
            beyond the tolerance.
        reference: optional items ``(n, *item)`` (e.g. training images): the table then
            counts samples ending nearest the same item as without the jump.
        device: where the jump runs (``"cpu"``, ``"cuda"``, ...).
        store: keep the calibration in ``model`` (so ``model.save`` writes it and
            ``k="auto"`` finds it).
        progress: print the count of network evaluations to standard error as they happen.

    Returns:
        A :class:`Calibration`: ``.k``, ``.table``, ``.nfe`` (the cost).

    Raises:
        Whatever ``denoiser`` raises (unchanged); InvalidArgumentError / ShapeMismatchError /
        NonFiniteError for a bad schedule, shape, option or a NaN from the network.
    """
    levels = schedule_levels(sigmas)
    lib = _cal_lib()
    torch_in = _is_torch(x_T)
    if torch_in:
        x_np = x_T.detach().to("cpu", dtype=__import__("torch").float32).contiguous().numpy()
    else:
        x_np = np.asarray(x_T, dtype=np.float32)
    batch = x_np.shape[0] if x_np.ndim > 1 else 1
    shape = tuple(x_np.shape) if x_np.ndim > 1 else (1,) + tuple(x_np.shape)
    if int(np.prod(shape[1:])) != model.dim:
        from .errors import ShapeMismatchError

        raise ShapeMismatchError(
            f"`x_T` has the wrong size: expected (batch, *item) with {model.dim} values per item, got shape {tuple(x_np.shape)}",
            3,
        )
    x_flat = np.ascontiguousarray(x_np.reshape(batch, model.dim), dtype=np.float32)

    opts = _Options()
    opts.sampler = _sampler_code(sampler)
    if tolerance is not None:
        opts.tolerance_rule, opts.tolerance = GS_TOLERANCE_RMS, float(tolerance)
    if max_k is not None:
        if isinstance(max_k, bool) or int(max_k) != max_k or max_k < 1:
            raise InvalidArgumentError(f"invalid argument `max_k`: expected an integer >= 1, got {max_k!r}", 2)
        opts.max_k = int(max_k)
    opts.full_table = int(bool(full_table))
    ref = None
    if reference is not None:
        ref = np.ascontiguousarray(_floats_2d(reference, model.dim), dtype=np.float32)
        opts.reference = ref.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        opts.reference_items = ref.shape[0]

    edm_schedule = all(n.alpha == 1.0 for n in levels)
    failure: List[BaseException] = []
    calls = [0]

    def on_call(_user, xp, rows, dim, at, outp) -> int:
        try:
            x = np.ctypeslib.as_array(xp, shape=(rows * dim,)).reshape((rows,) + shape[1:])
            if torch_in:
                import torch

                xt = torch.from_numpy(x.copy()).to(device=x_T.device, dtype=x_T.dtype)
                level = (
                    torch.full((rows,), at.sigma, device=x_T.device, dtype=x_T.dtype)
                    if edm_schedule
                    else Noise(at.alpha, at.sigma)
                )
                with torch.no_grad():
                    d = denoiser(xt, level)
                d = d.detach().to("cpu", dtype=torch.float32).contiguous().numpy()
            else:
                level = np.full((rows,), at.sigma) if edm_schedule else Noise(at.alpha, at.sigma)
                d = np.asarray(denoiser(x.copy(), level), dtype=np.float32)
            if d.size != rows * dim:
                raise ValueError(f"the denoiser returned {d.size} values for {rows} x {dim} inputs (shape {d.shape})")
            ctypes.memmove(outp, np.ascontiguousarray(d).ctypes.data, rows * dim * 4)
            calls[0] += 1
            if progress:
                print(f"\rcalibrating: {calls[0]} network evaluations", end="", file=sys.stderr, flush=True)
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised after the library returns
            failure.append(e)
            return 1

    callback = _DenoiseFn(on_call)
    arr = (_lib.GsNoise * len(levels))(*[_lib.GsNoise(float(n.alpha), float(n.sigma)) for n in levels])
    kind, ordinal = parse_device(device)
    ctx = context(kind, ordinal)
    handle = ctypes.c_void_p()
    status = lib.gs_calibrate(
        ctx.handle,
        model._handle,
        callback,
        None,
        arr,
        len(levels),
        x_flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        batch,
        ctypes.byref(opts),
        ctypes.byref(handle),
    )
    if progress:
        print(file=sys.stderr)
    if failure:
        raise failure[0]
    _lib.check(status)
    try:
        n = ctypes.c_size_t(0)
        _lib.check(lib.gs_calibration_json(handle, None, 0, ctypes.byref(n)))
        buf = ctypes.create_string_buffer(n.value + 1)
        _lib.check(lib.gs_calibration_json(handle, buf, n.value + 1, ctypes.byref(n)))
        result = _parse(buf.value.decode("utf-8"))
        if store:
            _store(model, handle)
    finally:
        lib.gs_calibration_free(handle)
    return result


def _floats_2d(values: Any, dim: int) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    a = np.asarray(values, dtype=np.float32)
    if a.size == 0 or a.size % dim:
        from .errors import ShapeMismatchError

        raise ShapeMismatchError(f"`reference` has the wrong size: expected (n, *item) with {dim} values per item, got shape {a.shape}", 3)
    return a.reshape(-1, dim)


def _store(model: Model, cal_handle: Any) -> None:
    """Swaps ``model``'s library handle for a copy holding the calibration. The old handle
    stays alive until the Model is collected (calls in flight on other threads may use it)."""
    lib = _cal_lib()
    new = ctypes.c_void_p()
    _lib.check(lib.gs_model_with_calibration(model._handle, cal_handle, ctypes.byref(new)))
    n = ctypes.c_size_t(0)
    try:
        _lib.check(lib.gs_model_metadata(new, None, 0, ctypes.byref(n)))
        buf = ctypes.create_string_buffer(n.value + 1)
        _lib.check(lib.gs_model_metadata(new, buf, n.value + 1, ctypes.byref(n)))
    except BaseException:
        lib.gs_model_free(new)
        raise
    model._adopt_handle(new, json.loads(buf.value.decode("utf-8")))


def calibrated_k(model: Model, sigmas: Any, sampler: str = "heun") -> int:
    """The k that ``model`` holds for ``sampler`` on ``sigmas`` (EDM sigmas or levels, as
    for :func:`calibrate`; compared to 1e-5 relative).

    Raises:
        InvalidArgumentError: the model holds no calibration for this sampler and schedule
            (the message lists those it holds).
    """
    levels = schedule_levels(sigmas)
    lib = _cal_lib()
    arr = (_lib.GsNoise * max(len(levels), 1))(*[_lib.GsNoise(float(n.alpha), float(n.sigma)) for n in levels])
    k = ctypes.c_size_t(0)
    _lib.check(lib.gs_model_calibrated_k(model._handle, _sampler_code(sampler), arr, len(levels), ctypes.byref(k)))
    return int(k.value)


def x0_denoiser(net: Callable[[Any, Any], Any], prediction: str) -> Callable[[Any, Any], Any]:
    """Wraps a network into the x0-predictor :func:`calibrate` calls.

    ``net(x, level)`` is called with the arguments the denoiser gets (on EDM schedules
    ``level`` is the sigma tensor of k-diffusion's convention; on VP/flow levels a
    :class:`Noise`; map it to your network's timestep inside ``net``) and returns its
    prediction:

    * ``"x0"``: the clean sample (returned as is);
    * ``"eps"``: the noise, x0 = (x - sigma eps) / alpha;
    * ``"v"``: v = alpha eps - sigma x0 (Salimans & Ho, on VP levels), x0 = alpha x - sigma v;
    * ``"flow"``: the velocity v = eps - x0 of rectified flow (on flow levels), x0 = x - t v.
    """
    kinds = ("x0", "eps", "v", "flow")
    if prediction not in kinds:
        raise InvalidArgumentError(f"invalid argument `prediction`: expected one of {kinds}, got {prediction!r}", 2)

    def scales(x: Any, level: Any):
        if isinstance(level, Noise):
            return level.alpha, level.sigma
        s = level.reshape((-1,) + (1,) * (x.ndim - 1))
        return 1.0, s

    def denoise(x: Any, level: Any) -> Any:
        out = net(x, level)
        if prediction == "x0":
            return out
        alpha, sigma = scales(x, level)
        if prediction == "eps":
            return (x - sigma * out) / alpha
        if prediction == "v":
            if not isinstance(level, Noise):
                raise InvalidArgumentError("v-prediction needs VP levels (a list of gs.Noise), not EDM sigmas", 2)
            return alpha * x - sigma * out
        if not isinstance(level, Noise):
            raise InvalidArgumentError("flow prediction needs flow levels (a list of gs.Noise), not EDM sigmas", 2)
        return x - sigma * out

    return denoise


def resolve_k(model: Model, k: Union[int, str], sigmas: Any, sampler: str) -> int:
    """``k`` as given, or for ``"auto"`` the calibrated k of ``model`` (see
    :func:`calibrated_k`)."""
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f"k must be a number of steps or 'auto', got {k!r}")
        return calibrated_k(model, sigmas, sampler)
    return k


__all__ = ["Calibration", "Candidate", "calibrate", "calibrated_k", "schedule_levels", "x0_denoiser"]
