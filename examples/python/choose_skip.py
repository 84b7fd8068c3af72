"""Given any sigma schedule and a limit on the jump, pick k and jump.

    choice = gs.choose_skip(model, x, sigmas, sigma_floor=19.0)   # or max_jump=4, or both
    x, sigmas = choice.x, choice.sigmas                            # then run any sampler

The published results keep sigma_skip above about 5; on EDM's 18-step schedule a floor of
19 jumps 80 -> 19.35, the 4 steps of the paper's CIFAR-10 result (FID 1.934 vs 1.959).

Run: python examples/python/choose_skip.py   (after `pip install ./bindings/python`)
"""

import numpy as np

import gaussskip as gs
from _toy import check, rel, toy_model
from kdiffusion_skip import sample_heun


def main():
    model = toy_model()
    rng = np.random.default_rng(4)
    sigmas = gs.karras_sigmas(18, 0.002, 80.0)
    x_T = rng.standard_normal((16, 1, 8, 8)) * sigmas[0]
    exact = model.skip(x_T, sigmas[0], 0.0)

    by_floor = gs.choose_skip(model, x_T, sigmas, sigma_floor=19.0)
    by_count = gs.choose_skip(model, x_T, sigmas, max_jump=2)
    both = gs.choose_skip(model, x_T, sigmas, sigma_floor=5.0, max_jump=6)
    for name, c in [("sigma_floor=19", by_floor), ("max_jump=2", by_count), ("floor 5, max 6", both)]:
        print(f"{name:15s}: k = {c.k}, sigma_skip = {c.sigmas[0]:.4g}")

    x, nfe = sample_heun(model.denoise, by_floor.x, by_floor.sigmas)
    print(f"Heun after the jump: {nfe} NFE, distance to exact {rel(x, exact):.2e}")

    check(by_floor.k == 4 and by_floor.sigmas[0] >= 19.0 > sigmas[5], "floor 19: the largest k above the floor")
    check(by_count.k == 2, "max_jump caps k")
    check(both.k == 6, "both bounds: the tighter one wins")
    check(rel(by_floor.x, model.skip(x_T, sigmas[0], sigmas[4])) < 1e-6, "the returned state is the jump to sigmas[k]")
    check(nfe == 27, "27 NFE instead of 35")
    print("OK")


if __name__ == "__main__":
    main()
