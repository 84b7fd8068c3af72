"""EDM's edm_sampler: restart the rho-schedule at sigma_skip.

    latents, kw = gs.edm_sampler_skip(model, latents, k=4, num_steps=18)
    images = edm_sampler(net, latents, **kw)     # num_steps=14, sigma_max=sigma_skip

The restarted schedule is exactly steps k..N-1 of the original (both are linear in
sigma^(1/rho) with the same increment), so the sampler runs the remaining steps unchanged.

Run: python examples/python/edm_restart.py   (after `pip install ./bindings/python`)
"""

import numpy as np

import gaussskip as gs
from _toy import check, rel, toy_model


def edm_sampler(net, latents, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The deterministic EDM sampler (Karras et al. 2022, Algorithm 2 with S_churn = 0), as in
    EDM's generate.py; returns (x, t_steps, NFE)."""
    i = np.arange(num_steps)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = np.append(t_steps, 0.0)
    x_next = latents.astype(np.float64) * t_steps[0]
    nfe = 0
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        d_cur = (x_cur - net(x_cur, t_cur)) / t_cur
        nfe += 1
        x_next = x_cur + (t_next - t_cur) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next)) / t_next
            nfe += 1
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next, t_steps, nfe


def main():
    model = toy_model()
    net = model.denoise  # stands in for the trained network
    rng = np.random.default_rng(2)
    latents = rng.standard_normal((16, 1, 8, 8))
    exact = model.skip(latents * 80.0, 80.0, 0.0)

    x_full, t_full, nfe_full = edm_sampler(net, latents)
    k = 4
    lat_skip, kw = gs.edm_sampler_skip(model, latents, k, num_steps=18)
    print(f"edm_sampler kwargs after the jump: {kw}")
    x_skip, t_skip, nfe_skip = edm_sampler(net, lat_skip, **kw)

    grid_diff = float(np.max(np.abs(t_skip - t_full[k:]) / np.maximum(t_full[k:], 1e-300)))
    print(f"restarted grid vs steps {k}.. of the original: max rel. diff {grid_diff:.1e}")

    # The same remaining steps run by hand from the jumped state on the original grid.
    x_ref = model.skip(latents * 80.0, t_full[0], t_full[k])
    for i, (t_cur, t_next) in enumerate(zip(t_full[k:-1], t_full[k + 1 :])):
        x_cur = x_ref
        d_cur = (x_cur - net(x_cur, t_cur)) / t_cur
        x_ref = x_cur + (t_next - t_cur) * d_cur
        if k + i < 18 - 1:
            d_prime = (x_ref - net(x_ref, t_next)) / t_next
            x_ref = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)

    print(f"full sampler: {nfe_full} NFE, distance to exact {rel(x_full, exact):.2e}")
    print(f"jump + restarted sampler: {nfe_skip} NFE, distance to exact {rel(x_skip, exact):.2e}")
    check(grid_diff < 1e-12, "the restarted rho-schedule is the remaining grid")
    check(rel(x_skip, x_ref) < 1e-6, f"restarted sampler = remaining steps of the original ({rel(x_skip, x_ref):.1e})")
    check((nfe_full, nfe_skip) == (35, 27), "35 -> 27 network evaluations")
    check(rel(x_skip, exact) <= rel(x_full, exact), "at least as close to the exact sample")
    print("OK")


if __name__ == "__main__":
    main()
