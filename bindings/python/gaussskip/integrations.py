"""Drop-in use with existing samplers (SPEC §9): each replaces the first ``k`` steps of a
schedule by one exact jump, then the sampler runs the rest unchanged.

* k-diffusion: ``x, sigmas = kdiffusion_skip(model, x, sigmas, k)`` then
  ``sample_heun(net, x, sigmas)``.
* EDM's ``edm_sampler``: ``latents, kw = edm_sampler_skip(model, latents, k, num_steps=18)``
  then ``edm_sampler(net, latents, **kw)`` (the rho-schedule restarted at sigma_skip is the
  remaining grid).
* diffusers: ``latents, timesteps = diffusers_skip(model, scheduler, latents, k)`` after
  ``scheduler.set_timesteps(N)``, then loop over ``timesteps`` (see its docstring for the
  ``init_noise_sigma`` caveat).
* :func:`choose_skip`: the largest k allowed by a sigma floor and/or a maximum jump.

The state ``x`` may be a NumPy array or a PyTorch tensor (CPU or CUDA), as for
:meth:`Model.skip`. Schedules may be lists, NumPy arrays or tensors.
"""

from typing import Any, NamedTuple, Optional, Tuple

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


def kdiffusion_skip(model: Model, x, sigmas, k: int) -> Tuple[Any, Any]:
    """Jumps ``x`` (k-diffusion state ``noise * sigmas[0]``) to ``sigmas[k]`` and returns
    ``(x_skip, sigmas[k:])`` for any k-diffusion sampler (``sample_heun``, ``sample_euler``,
    ``sample_dpmpp_2m``, ...). ``k = 0`` returns the inputs unchanged."""
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
    k: int,
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
    """
    if not 0 <= k <= num_steps - 2:
        raise ValueError(f"k must be in 0..={num_steps - 2} (the sampler needs 2 levels), got {k}")
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    kwargs = dict(num_steps=num_steps - k, sigma_min=sigma_min, sigma_max=float(t[k]), rho=rho)
    if k == 0:
        return latents, kwargs
    x_skip = model.skip(latents * sigma_max, float(t[0]), float(t[k]))
    return x_skip / float(t[k]), kwargs


def scheduler_level(scheduler, index: int, parameterization: Optional[str] = None) -> Noise:
    """The noise level of a diffusers-style scheduler's state at step ``index`` (an index
    into its ``timesteps``/``sigmas``), for the state the scheduler steps on:

    * ``"edm"``: Euler/Heun/LMS/DPM2-style schedulers whose state is x0 + sigma * eps
      (``init_noise_sigma`` > 1): (1, sigmas[index]).
    * ``"vp"``: DDIM/DDPM/DPM-Solver/UniPC-style, state sqrt(a) x0 + sqrt(1 - a) eps: from
      ``sigmas`` (a = 1 / (1 + sigma^2)) when the scheduler has them, else
      ``alphas_cumprod[timesteps[index]]``.
    * ``"flow"``: flow-matching schedulers (SD3, Flux): (1 - sigmas[index], sigmas[index]).

    ``None`` guesses: "flow" for a class named FlowMatch*, "edm" when
    ``init_noise_sigma`` > 1, else "vp".
    """
    kind = parameterization or _guess_parameterization(scheduler)
    sigmas = getattr(scheduler, "sigmas", None)
    if kind == "edm":
        return Noise(1.0, _float(sigmas[index]))
    if kind == "flow":
        return flow(_float(sigmas[index]))
    if kind == "vp":
        if sigmas is not None and len(sigmas) > index:
            s = _float(sigmas[index])
            return vp(1.0 / (1.0 + s * s))
        t = int(_float(scheduler.timesteps[index]))
        return vp(_float(scheduler.alphas_cumprod[t]))
    raise ValueError(f"parameterization must be 'edm', 'vp' or 'flow', got {parameterization!r}")


def _guess_parameterization(scheduler) -> str:
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    if _float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        return "edm"
    return "vp"


def diffusers_skip(
    model: Model,
    scheduler,
    latents,
    k: int,
    *,
    parameterization: Optional[str] = None,
) -> Tuple[Any, Any]:
    """Jumps a diffusers denoising loop over its first ``k`` steps.

    Call after ``scheduler.set_timesteps(N)``, with ``latents`` the state at
    ``timesteps[0]`` (as the pipeline prepares it: unit noise times
    ``scheduler.init_noise_sigma``). Moves the state to step ``k * scheduler.order``,
    calls ``scheduler.set_begin_index(k * scheduler.order)`` (the img2img pattern) and
    returns ``(latents_skip, scheduler.timesteps[k * order:])`` to loop over.

    Caveat ``init_noise_sigma``: a pipeline called with ``latents=`` multiplies them by
    ``scheduler.init_noise_sigma`` and calls ``set_timesteps`` again (which resets the begin
    index), so hand a pipeline ``latents_skip / scheduler.init_noise_sigma`` only together
    with a way to start at step k (its ``timesteps=``/``sigmas=`` argument, or your own
    loop as in the example). The scheduler must have ``set_begin_index`` (diffusers >= 0.27).
    """
    order = int(getattr(scheduler, "order", 1))
    start = k * order
    n = len(scheduler.timesteps)
    if not 0 <= start <= n - 1:
        raise ValueError(f"k * order = {start} must be in 0..={n - 1} (the scheduler has {n} timesteps)")
    if not hasattr(scheduler, "set_begin_index"):
        raise TypeError("the scheduler has no set_begin_index (diffusers >= 0.27 needed)")
    if k > 0:
        frm = scheduler_level(scheduler, 0, parameterization)
        to = scheduler_level(scheduler, start, parameterization)
        latents = model.skip(latents, frm, to)
    scheduler.set_begin_index(start)
    return latents, scheduler.timesteps[start:]


__all__ = [
    "SkipChoice",
    "choose_skip",
    "diffusers_skip",
    "edm_sampler_skip",
    "kdiffusion_skip",
    "karras_sigmas",
    "scheduler_level",
]
