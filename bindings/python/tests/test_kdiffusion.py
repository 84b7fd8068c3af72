"""k-diffusion's own samplers after the jump (needs k-diffusion and torch; skips otherwise).

The denoiser is the model's exact one for its Gaussian, called as k-diffusion calls a
network: ``model(x, sigma * s_in)`` with a (batch,) tensor of sigmas.
"""

import pytest

import gaussskip as gs
from conftest import make_parts, rel_err

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
try:
    import k_diffusion as K
except ImportError as e:  # absent, or one of its many dependencies is
    pytest.skip(f"k-diffusion cannot be imported ({e}); pip install k-diffusion", allow_module_level=True)


@pytest.fixture(scope="module")
def model():
    return gs.Model.from_arrays(*make_parts(48, 48, 0.0, seed=61, spread=2.0))


class Counted:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.model.denoise(x, sigma)  # sigma: a (batch,) tensor, one level per row


def to_np(t):
    return t.double().numpy()


@pytest.mark.parametrize(
    "name,per_step", [("sample_euler", 1), ("sample_heun", 2), ("sample_dpmpp_2m", 1), ("sample_lms", 1)]
)
def test_samplers_after_the_jump(model, name, per_step):
    sampler = getattr(K.sampling, name)
    sigmas = K.sampling.get_sigmas_karras(40, 0.002, 80.0, device="cpu")
    x_T = torch.randn((6, 3, 4, 4), generator=torch.Generator().manual_seed(7)) * sigmas[0]
    exact = model.skip(x_T, float(sigmas[0]), 0.0)
    k = 8
    full_net, skip_net = Counted(model), Counted(model)
    full = sampler(full_net, x_T, sigmas, disable=True)
    x, rest = gs.kdiffusion_skip(model, x_T, sigmas, k)
    out = sampler(skip_net, x, rest, disable=True)
    # Heun's last step (to sigma 0) is an Euler step: one evaluation fewer on the full run too.
    assert full_net.calls - skip_net.calls == per_step * k
    err_full, err_jump = rel_err(to_np(full), to_np(exact)), rel_err(to_np(out), to_np(exact))
    assert err_jump <= 1.25 * err_full + 1e-4, (err_full, err_jump)


def test_heun_converges_to_the_jump_as_steps_grow(model):
    x_T = torch.randn((6, 3, 4, 4), generator=torch.Generator().manual_seed(8)) * 80.0
    errs = []
    for n in (18, 80, 320):
        sigmas = K.sampling.get_sigmas_karras(n, 0.002, 80.0, device="cpu")
        full = K.sampling.sample_heun(Counted(model), x_T, sigmas, disable=True)
        x, rest = gs.kdiffusion_skip(model, x_T, sigmas, n // 4)
        jump = K.sampling.sample_heun(Counted(model), x, rest, disable=True)
        errs.append(rel_err(to_np(jump), to_np(full)))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5, errs
