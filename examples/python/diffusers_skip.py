"""diffusers: jump over the first k steps of a scheduler loop.

    scheduler.set_timesteps(N)
    latents, timesteps = gs.diffusers_skip(model, scheduler, latents, k)   # set_begin_index(k * order)
    for t in timesteps: ...                                                 # the usual loop

diffusers is not needed here: TinyEulerScheduler has the attributes and methods of
diffusers' EulerDiscreteScheduler (Karras sigmas, epsilon prediction) that the loop and the
helper touch. With diffusers, pass the real scheduler instead.

For `pipe(...)` calls instead of your own loop, see diffusers_pipeline.py
(gs.diffusers_pipeline_skip returns the pipeline's keyword arguments).

Run: python examples/python/diffusers_skip.py   (after `pip install ./bindings/python`)
"""

import numpy as np

import gaussskip as gs
from _toy import check, rel, toy_model


class TinyEulerScheduler:
    """Euler steps on x = x0 + sigma * eps, epsilon-predicting model on VP-scaled input."""

    order = 1

    def __init__(self, sigma_min=0.002, sigma_max=80.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._begin_index = None
        self._step_index = None

    def set_timesteps(self, n):
        self.sigmas = gs.karras_sigmas(n, self.sigma_min, self.sigma_max)
        self.timesteps = 0.25 * np.log(self.sigmas[:-1])  # EDM's c_noise: float timesteps
        self._begin_index = None
        self._step_index = None

    @property
    def init_noise_sigma(self):
        return float(self.sigmas.max())

    def set_begin_index(self, begin_index=0):
        self._begin_index = begin_index

    def _init_step_index(self, t):
        if self._begin_index is None:
            self._step_index = int(np.argmin(np.abs(self.timesteps - t)))
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample, t):
        if self._step_index is None:
            self._init_step_index(t)
        sigma = self.sigmas[self._step_index]
        return sample / np.sqrt(sigma**2 + 1)

    def step(self, model_output, t, sample):
        if self._step_index is None:
            self._init_step_index(t)
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        denoised = sample - sigma * model_output
        derivative = (sample - denoised) / sigma
        self._step_index += 1
        return sample + derivative * (sigma_next - sigma)


def make_unet(model):
    """An epsilon-predicting "UNet" on VP-scaled input x / sqrt(1 + sigma^2), exact for the toy
    data: the model's denoiser at the VP level alpha_bar = 1 / (1 + sigma^2)."""

    def unet(x_in, t):
        sigma = np.exp(4.0 * t)
        level = gs.vp(1.0 / (1.0 + sigma**2))
        denoised = model.denoise(x_in, level)
        return (x_in - level.alpha * denoised) / level.sigma

    return unet


def run_loop(scheduler, unet, latents, timesteps):
    first_sigma = None
    for t in timesteps:
        latent_in = scheduler.scale_model_input(latents, t)
        if first_sigma is None:
            first_sigma = scheduler.sigmas[scheduler._step_index]
        eps = unet(latent_in, t)
        latents = scheduler.step(eps, t, latents)
    return latents, first_sigma


def main():
    model = toy_model()
    unet = make_unet(model)
    n, k = 30, 6
    scheduler = TinyEulerScheduler()
    scheduler.set_timesteps(n)
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((8, 1, 8, 8))
    latents = noise * scheduler.init_noise_sigma
    exact = model.skip(latents, scheduler.sigmas[0], 0.0)

    full, _ = run_loop(scheduler, unet, latents, scheduler.timesteps)

    scheduler.set_timesteps(n)
    jumped, timesteps = gs.diffusers_skip(model, scheduler, latents, k)
    out, first_sigma = run_loop(scheduler, unet, jumped, timesteps)
    print(f"{len(scheduler.timesteps)} steps -> jump + {len(timesteps)} steps; loop starts at sigma {first_sigma:.4g}")
    print(f"full loop: distance to exact {rel(full, exact):.2e}; jump + loop: {rel(out, exact):.2e}")

    check(first_sigma == scheduler.sigmas[k], "the scheduler resumed at step k (set_begin_index)")
    check(len(timesteps) == n - k, f"{k} network evaluations saved")
    check(rel(jumped, model.skip(latents, scheduler.sigmas[0], scheduler.sigmas[k])) < 1e-6, "the jump used the scheduler's own sigmas")
    check(rel(out, exact) <= rel(full, exact), "jump + loop at least as close to the exact sample")
    print("OK")


if __name__ == "__main__":
    main()
