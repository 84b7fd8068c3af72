"""k-diffusion style: replace the first k steps of a sampler by one exact jump.

    x, sigmas = gs.kdiffusion_skip(model, x, sigmas, k)   # x jumped to sigmas[k]; sigmas[k:]
    x = sample_heun(net, x, sigmas)                        # the rest, unchanged

Run: python examples/python/kdiffusion_skip.py   (after `pip install ./bindings/python`)
"""

import numpy as np

import gaussskip as gs
from _toy import check, rel, toy_model


def sample_heun(denoiser, x, sigmas):
    """k-diffusion's deterministic sample_heun (Karras et al. Algorithm 1); returns (x, NFE)."""
    nfe = 0
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, s)) / s
        nfe += 1
        if s_next == 0:
            x = x + d * (s_next - s)  # Euler on the last step
        else:
            x2 = x + d * (s_next - s)
            d2 = (x2 - denoiser(x2, s_next)) / s_next
            nfe += 1
            x = x + (d + d2) / 2 * (s_next - s)
    return x, nfe


def main():
    model = toy_model()
    net = model.denoise  # stands in for the trained network (exact for Gaussian data)
    sigmas = gs.karras_sigmas(18, 0.002, 80.0)  # EDM's CIFAR-10 schedule: Heun, 35 NFE
    rng = np.random.default_rng(1)
    x_T = rng.standard_normal((16, 1, 8, 8)) * sigmas[0]
    exact = model.skip(x_T, sigmas[0], 0.0)  # the exact end of the probability-flow ODE

    k = 4
    x, rest = gs.kdiffusion_skip(model, x_T, sigmas, k)
    print(f"jumped sigma {sigmas[0]:g} -> {rest[0]:.4g} in one call, {len(rest) - 1} steps left")

    # The jump is the ODE's solution: compare with a fine Heun integration of the same span.
    fine = np.geomspace(sigmas[0], sigmas[k], 2001)
    x_fine, _ = sample_heun(net, x_T, fine)
    err_jump = rel(x, x_fine)

    x_full, nfe_full = sample_heun(net, x_T, sigmas)
    x_skip, nfe_skip = sample_heun(net, x, rest)
    err_full, err_skip = rel(x_full, exact), rel(x_skip, exact)
    print(f"full Heun: {nfe_full} NFE, distance to the exact sample {err_full:.2e}")
    print(f"jump + Heun: {nfe_skip} NFE, distance to the exact sample {err_skip:.2e}")

    check(err_jump < 1e-5, f"jump equals a 2000-step Heun integration (rel. diff {err_jump:.1e})")
    check((nfe_full, nfe_skip) == (35, 27), "35 -> 27 network evaluations (23% fewer)")
    check(err_skip <= err_full, "jump + Heun lands at least as close to the exact sample")
    print("OK")


if __name__ == "__main__":
    main()
