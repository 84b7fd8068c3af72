"""Drop-in use with existing samplers (SPEC §9): each replaces the first ``k`` steps of a
schedule by one exact jump, then the sampler runs the rest unchanged.

* k-diffusion: ``x, sigmas = kdiffusion_skip(model, x, sigmas, k)`` then
  ``sample_heun(net, x, sigmas)``.
* EDM's ``edm_sampler``: ``latents, kw = edm_sampler_skip(model, latents, k, num_steps=18)``
  then ``edm_sampler(net, latents, **kw)`` (the rho-schedule restarted at sigma_skip is the
  remaining grid).
* diffusers pipelines: ``pipe(prompt, **diffusers_pipeline_skip(model, pipe, noise, k, N))``
  (the rest of the schedule as ``sigmas=``/``timesteps=``, and the jumped ``latents=``).
* diffusers loops: ``latents, timesteps = diffusers_skip(model, scheduler, latents, k)`` after
  ``scheduler.set_timesteps(N)``, then loop over ``timesteps``.
* :func:`choose_skip`: the largest k allowed by a sigma floor and/or a maximum jump.

``k="auto"`` (k-diffusion, EDM and diffusers helpers) takes the k that
:func:`gaussskip.calibrate` stored in the model for this sampler and schedule, and raises
``InvalidArgumentError`` when the model holds none.

The state ``x`` may be a NumPy array or a PyTorch tensor (CPU or CUDA), as for
:meth:`Model.skip`. Schedules may be lists, NumPy arrays or tensors.
"""

import copy
import inspect
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .calibrate import resolve_k
from .model import Model
from .noise import Noise, flow, karras_sigmas, vp


class SkipChoice(NamedTuple):
    """Result of :func:`choose_skip`: the number of steps jumped over, the state at
    ``sigmas[k]``, and the schedule the sampler continues with (``sigmas[k:]``)."""

    k: int
    x: Any
    sigmas: Any


def _float(v) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def kdiffusion_skip(model: Model, x, sigmas, k: Union[int, str], *, sampler: str = "heun") -> Tuple[Any, Any]:
    """Jumps ``x`` (k-diffusion state ``noise * sigmas[0]``) to ``sigmas[k]`` and returns
    ``(x_skip, sigmas[k:])`` for any k-diffusion sampler (``sample_heun``, ``sample_euler``,
    ``sample_dpmpp_2m``, ...). ``k = 0`` returns the inputs unchanged. ``k="auto"``: the k
    calibrated for ``sampler`` (``"heun"`` or ``"euler"``) on ``sigmas``."""
    k = resolve_k(model, k, sigmas, sampler)
    n = len(sigmas)
    if not 0 <= k <= n - 2:
        raise ValueError(f"k must be in 0..={n - 2} so that at least one step remains, got {k}")
    if k == 0:
        return x, sigmas
    return model.skip(x, _float(sigmas[0]), _float(sigmas[k])), sigmas[k:]


def choose_skip(
    model: Model,
    x,
    sigmas,
    *,
    sigma_floor: Optional[float] = None,
    max_jump: Optional[int] = None,
) -> SkipChoice:
    """Picks the largest ``k`` with ``sigmas[k] >= sigma_floor`` and ``k <= max_jump``
    (either bound may be left out, not both), keeping at least one step for the sampler,
    and jumps ``x`` from ``sigmas[0]`` to ``sigmas[k]``.

    ``sigmas`` is a decreasing EDM schedule (k-diffusion/EDM style, usually ending in 0).
    The published results keep sigma_skip above about 5 (quality breaks down below); on
    EDM's 18-step CIFAR-10 schedule a floor of 19 skips 4 steps (35 -> 27 NFE with Heun).
    """
    if sigma_floor is None and max_jump is None:
        raise ValueError("choose_skip: give sigma_floor, max_jump, or both")
    values = [_float(s) for s in sigmas]
    if any(b > a for a, b in zip(values, values[1:])):
        raise ValueError("choose_skip: sigmas must be non-increasing")
    limit = len(values) - 2
    if max_jump is not None:
        if max_jump < 0:
            raise ValueError(f"choose_skip: max_jump must be >= 0, got {max_jump}")
        limit = min(limit, int(max_jump))
    k = 0
    for i in range(1, limit + 1):
        if sigma_floor is not None and values[i] < sigma_floor:
            break
        k = i
    x_skip, rest = kdiffusion_skip(model, x, sigmas, k)
    return SkipChoice(k, x_skip, rest)


def edm_sampler_skip(
    model: Model,
    latents,
    k: Union[int, str],
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> Tuple[Any, dict]:
    """For EDM's ``edm_sampler(net, latents, num_steps, sigma_min, sigma_max, rho, ...)``,
    which starts from ``latents * sigma_max``: jumps that state to ``sigma_skip = t_k`` and
    returns ``(latents_skip, kwargs)`` with ``latents_skip = x_skip / sigma_skip`` and
    ``kwargs = {num_steps: num_steps - k, sigma_min, sigma_max: sigma_skip, rho}``.

    The restarted schedule is exactly steps k..N-1 of the original one: both are linear in
    sigma^(1/rho) with the same increment, so the sampler reproduces the remaining steps.
    ``k="auto"``: the k calibrated for Heun on this schedule (``edm_sampler`` is Heun).
    """
    if isinstance(k, str):
        k = resolve_k(model, k, karras_sigmas(num_steps, sigma_min, sigma_max, rho), "heun")
    if not 0 <= k <= num_steps - 2:
        raise ValueError(f"k must be in 0..={num_steps - 2} (the sampler needs 2 levels), got {k}")
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    kwargs = dict(num_steps=num_steps - k, sigma_min=sigma_min, sigma_max=float(t[k]), rho=rho)
    if k == 0:
        return latents, kwargs
    x_skip = model.skip(latents * sigma_max, float(t[0]), float(t[k]))
    return x_skip / float(t[k]), kwargs


def scheduler_level(scheduler: Any, index: int, parameterization: Optional[str] = None) -> Noise:
    """The noise level of a diffusers-style scheduler's state at step ``index`` (an index
    into its ``timesteps``/``sigmas``), for the state the scheduler steps on:

    * ``"edm"``: Euler/Heun/LMS/DPM2-style schedulers whose state is x0 + sigma * eps
      (``init_noise_sigma`` > 1): (1, sigmas[index]).
    * ``"vp"``: DDIM/DDPM/PNDM/DPM-Solver/UniPC-style, state sqrt(a) x0 + sqrt(1 - a) eps:
      from ``sigmas`` (a = 1 / (1 + sigma^2)) when the scheduler has them, else
      ``alphas_cumprod[timesteps[index]]``.
    * ``"flow"``: flow matching (SD3, Flux; ``use_flow_sigmas=True``):
      (1 - sigmas[index], sigmas[index]).

    ``None`` guesses from the scheduler (see :func:`guess_parameterization`).
    """
    kind = parameterization or guess_parameterization(scheduler)
    sigmas = getattr(scheduler, "sigmas", None)
    if kind not in ("edm", "vp", "flow"):
        raise ValueError(f"parameterization must be 'edm', 'vp' or 'flow', got {parameterization!r}")
    if kind == "vp" and (sigmas is None or len(sigmas) <= index):
        cumprod = getattr(scheduler, "alphas_cumprod", None)
        if cumprod is None:
            raise TypeError(
                f"cannot read the noise level of {type(scheduler).__name__}: it has neither "
                "`sigmas` nor `alphas_cumprod` (a scheduler of discrete tokens or of its own "
                "kind); pass a Gaussian diffusion scheduler"
            )
        t = int(_float(scheduler.timesteps[index]))
        return vp(_float(cumprod[t]))
    if sigmas is None:
        raise TypeError(f"cannot read the noise level of {type(scheduler).__name__}: it has no `sigmas`")
    s = _float(sigmas[index])
    if kind == "edm":
        return Noise(1.0, s)
    if kind == "flow":
        return flow(s)
    return vp(1.0 / (1.0 + s * s))


def guess_parameterization(scheduler: Any) -> str:
    """"flow" for a FlowMatch* class or a config with ``use_flow_sigmas=True`` or
    ``prediction_type="flow_prediction"``; "edm" when ``init_noise_sigma`` > 1 (the state is
    x0 + sigma * eps); else "vp"."""
    config = getattr(scheduler, "config", None)
    get = getattr(config, "get", None) or (lambda key, default=None: getattr(config, key, default))
    if (
        "FlowMatch" in type(scheduler).__name__
        or bool(get("use_flow_sigmas", False))
        or get("prediction_type", None) == "flow_prediction"
    ):
        return "flow"
    if _init_noise_sigma(scheduler) > 1.0:
        return "edm"
    return "vp"


_LMS_WARNING = (
    "{name} restarts its linear multistep history at the jump: the steps right after it run at "
    "order 1 where the full loop had built up order 4, which made the result worse than without "
    "the jump in our tests (see the README); prefer Euler, Heun, DPM-Solver++ or UniPC"
)


def _warn_if_multistep_history(scheduler: Any, k: int) -> None:
    if k > 0 and hasattr(scheduler, "derivatives") and hasattr(scheduler, "get_lms_coefficient"):
        warnings.warn(_LMS_WARNING.format(name=type(scheduler).__name__), UserWarning, stacklevel=3)


def _is_pndm(scheduler: Any) -> bool:
    return all(hasattr(scheduler, a) for a in ("plms_timesteps", "prk_timesteps", "counter", "ets"))


def diffusers_skip(
    model: Model,
    scheduler: Any,
    latents: Any,
    k: Union[int, str],
    *,
    parameterization: Optional[str] = None,
) -> Tuple[Any, Any]:
    """Jumps a diffusers denoising loop over its first ``k`` steps.

    Call after ``scheduler.set_timesteps(N)``, with ``latents`` the state at
    ``timesteps[0]`` (as the pipeline prepares it: unit noise times
    ``scheduler.init_noise_sigma``). Moves the state to step ``k * scheduler.order`` and
    returns ``(latents_skip, timesteps)`` to loop over: ``timesteps[k * order:]``, after
    ``scheduler.set_begin_index(k * order)`` for schedulers that count their steps (the
    img2img pattern). Schedulers without ``set_begin_index`` (DDIM, DDPM) find their place
    from the timestep; PNDM's PLMS chain is restarted at step k (``skip_prk_steps=True``,
    as Stable Diffusion configures it).

    For ``pipe(...)`` calls rather than your own loop, see :func:`diffusers_pipeline_skip`.
    LMS warns: its multistep history restarts after the jump. ``k="auto"``: the k calibrated
    on this scheduler's levels (see :func:`diffusers_levels`), for Heun when the scheduler
    is Heun's (order 2), else Euler.
    """
    if isinstance(k, str):
        k = resolve_k(model, k, diffusers_levels(scheduler, parameterization), _diffusers_sampler(scheduler))
    _warn_if_multistep_history(scheduler, k)
    if _is_pndm(scheduler):
        return _pndm_skip(model, scheduler, latents, k, parameterization)
    order = int(getattr(scheduler, "order", 1))
    start = k * order
    n = len(scheduler.timesteps)
    if not 0 <= start <= n - 1:
        raise ValueError(f"k * order = {start} must be in 0..={n - 1} (the scheduler has {n} timesteps)")
    if k > 0:
        frm = scheduler_level(scheduler, 0, parameterization)
        to = scheduler_level(scheduler, start, parameterization)
        latents = model.skip(latents, frm, to)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return latents, scheduler.timesteps[start:]


def diffusers_levels(scheduler: Any, parameterization: Optional[str] = None) -> List[Noise]:
    """The noise levels of a diffusers scheduler after ``set_timesteps``, one per step
    (noisiest first), then the clean level: the schedule to pass to
    :func:`gaussskip.calibrate` (in the scheduler's own space; calibrate with
    ``sampler="euler"``, or ``"heun"`` for an EDM-style Heun scheduler)."""
    order = int(getattr(scheduler, "order", 1))
    n = len(scheduler.timesteps) // order
    levels = [scheduler_level(scheduler, i * order, parameterization) for i in range(n)]
    return levels + [Noise(1.0, 0.0)]


def _diffusers_sampler(scheduler: Any) -> str:
    return "heun" if int(getattr(scheduler, "order", 1)) == 2 else "euler"


def _pndm_skip(model: Model, scheduler: Any, latents: Any, k: int, parameterization: Optional[str]) -> Tuple[Any, Any]:
    """PNDM steps through t0, t1, t1, t2, ... (the second level twice: a Heun-like warm-up of
    its multistep history); after a jump to t_k the chain restarts as t_k, t_k+1, t_k+1, ..."""
    if not scheduler.config.get("skip_prk_steps", False):
        raise ValueError(
            "PNDMScheduler with skip_prk_steps=False starts with Runge-Kutta steps tied to the start "
            "of the schedule; create it with skip_prk_steps=True (as Stable Diffusion does) to jump"
        )
    ts = scheduler.timesteps
    levels = list(ts[:2]) + list(ts[3:])  # t0, t1, t2, ... (drop the repeat)
    n = len(levels)
    if not 0 <= k <= n - 2:
        raise ValueError(f"k must be in 0..={n - 2} so that at least one step remains, got {k}")
    if k == 0:
        return latents, ts
    frm = scheduler_level(scheduler, 0, parameterization or "vp")
    to = scheduler_level(scheduler, 2 if k == 1 else k + 1, parameterization or "vp")
    latents = model.skip(latents, frm, to)
    rest = levels[k:]
    new = rest[:2] + rest[1:2] + rest[2:]
    scheduler.timesteps = _like(ts, new)
    scheduler.counter, scheduler.ets, scheduler.cur_sample = 0, [], None
    return latents, scheduler.timesteps


def _like(template: Any, values: List[Any]) -> Any:
    """``values`` in the container type of ``template`` (a tensor or an array)."""
    if hasattr(template, "new_tensor"):
        return template.new_tensor([_float(v) for v in values])
    return np.asarray([_float(v) for v in values], dtype=np.asarray(template).dtype)


def diffusers_pipeline_skip(
    model: Model,
    pipe: Any,
    noise: Any,
    k: int,
    num_inference_steps: int,
    *,
    parameterization: Optional[str] = None,
) -> Dict[str, Any]:
    """The keyword arguments that make a diffusers pipeline skip its first ``k`` steps:
    ``pipe(prompt, **diffusers_pipeline_skip(model, pipe, noise, k, 30))``.

    ``pipe``: a pipeline (its ``scheduler`` is used) or a scheduler; ``noise``: the unit
    Gaussian latents the pipeline would draw (shape and dtype of its ``latents``). The jump
    runs from the level of step 0 of the ``num_inference_steps`` schedule to step ``k``;
    the result is ``{"sigmas" or "timesteps": the rest of the schedule, "latents":
    x_skip / init_noise_sigma}`` (the pipeline multiplies ``latents`` by the
    ``init_noise_sigma`` of the schedule it is given). The pipeline's scheduler is left
    as it was; the restart is checked on a copy of it, and a scheduler that cannot restart
    at step k through these arguments (one that reshapes a given schedule, such as dynamic
    shifting) raises ``ValueError``: use :func:`diffusers_skip` in your own loop there.
    """
    scheduler = getattr(pipe, "scheduler", pipe)
    _warn_if_multistep_history(scheduler, k)
    work = copy.deepcopy(scheduler)
    work.set_timesteps(num_inference_steps)
    order = int(getattr(work, "order", 1))
    start = k * order
    n = len(work.timesteps)
    if not 0 <= start <= n - 1:
        raise ValueError(f"k * order = {start} must be in 0..={n - 1} (the scheduler has {n} timesteps)")
    if _is_pndm(work):
        raise ValueError("PNDM cannot restart at step k through pipe(...) arguments; use diffusers_skip in your own loop")
    state = noise * _init_noise_sigma(work)
    if k > 0:
        state = model.skip(state, scheduler_level(work, 0, parameterization), scheduler_level(work, start, parameterization))
    for kwargs in _restart_arguments(work, k, order):
        trial = copy.deepcopy(scheduler)
        try:
            trial.set_timesteps(**kwargs)
        except (TypeError, ValueError):
            continue
        if _same_schedule(trial, work, start):
            return {**kwargs, "latents": state / _init_noise_sigma(trial)}
    raise ValueError(
        f"{type(scheduler).__name__} with this configuration cannot restart at step {k} through "
        "pipe(sigmas=...) or pipe(timesteps=...); run your own loop with diffusers_skip"
    )


def _init_noise_sigma(scheduler: Any) -> float:
    """What a pipeline multiplies its latents by (flow-matching schedulers have none: 1)."""
    return _float(getattr(scheduler, "init_noise_sigma", 1.0))


def _floats(values: Any) -> List[float]:
    return [_float(v) for v in values]


def _restart_arguments(work: Any, k: int, order: int) -> List[Dict[str, Any]]:
    """Candidate set_timesteps arguments for the schedule from plain step k on (schedulers
    differ in whether a given sigma list holds the final sigma and whether they shift it)."""
    params = inspect.signature(work.set_timesteps).parameters
    out: List[Dict[str, Any]] = []
    sigmas = getattr(work, "sigmas", None)
    if "sigmas" in params and sigmas is not None and order == 1:
        sig = _floats(sigmas)
        tails = [sig[k:], sig[k:-1]]
        config = getattr(work, "config", None) or {}
        shift = _float(getattr(work, "shift", None) or config.get("flow_shift", None) or 1.0)
        if shift != 1.0:  # flow matching's static shift s' = a s / (1 + (a - 1) s), inverted
            tails += [[v / (shift - (shift - 1.0) * v) for v in t] for t in tails]
        # NumPy arrays: some schedulers do arithmetic on the given sequence directly.
        out += [{"sigmas": np.asarray(t)} for t in tails if t]
    if "timesteps" in params:
        out.append({"timesteps": np.asarray(_floats(work.timesteps)[::order][k:])})
    return out


def _same_schedule(trial: Any, work: Any, start: int) -> bool:
    """The levels must match to float32 rounding; the timesteps (the network's conditioning)
    to one training step, as schedulers that round sigma * 1000 down may land one below."""
    ts, want = _floats(trial.timesteps), _floats(work.timesteps)[start:]
    if len(ts) != len(want) or not np.allclose(ts, want, rtol=0.0, atol=1.0):
        return False
    s1, s0 = getattr(trial, "sigmas", None), getattr(work, "sigmas", None)
    if s1 is None or s0 is None:
        return True
    a, b = _floats(s1), _floats(s0)[start:]
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-5, atol=1e-7))


__all__ = [
    "SkipChoice",
    "choose_skip",
    "diffusers_levels",
    "diffusers_skip",
    "diffusers_pipeline_skip",
    "edm_sampler_skip",
    "guess_parameterization",
    "kdiffusion_skip",
    "karras_sigmas",
    "scheduler_level",
]
