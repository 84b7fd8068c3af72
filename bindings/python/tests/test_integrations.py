"""The sampler helpers: schedules, choice of k, EDM restart, diffusers duck typing."""

import numpy as np
import pytest

import gaussskip as gs
from conftest import Reference, make_parts, rel_err


@pytest.fixture
def toy():
    parts = make_parts(20, 20, 0.0, seed=21)
    return gs.Model.from_arrays(*parts), Reference(*parts)


def test_karras_sigmas_match_the_formula():
    s = gs.karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(s) == 19 and s[0] == pytest.approx(80.0) and s[17] == pytest.approx(0.002) and s[18] == 0.0
    i = np.arange(18)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], want, rtol=1e-14)
    assert gs.karras_sigmas(1, 1.0, 5.0).tolist() == pytest.approx([5.0, 0.0], rel=1e-14)
    with pytest.raises(ValueError):
        gs.karras_sigmas(0)


def test_noise_helpers():
    assert gs.edm(3.0) == gs.Noise(1.0, 3.0)
    assert gs.vp(0.25) == gs.Noise(0.5, np.sqrt(0.75))
    assert gs.flow(0.25) == gs.Noise(0.75, 0.25)
    assert gs.flow([0.0, 1.0]) == [gs.Noise(1.0, 0.0), gs.Noise(0.0, 1.0)]
    assert gs.vp(0.25).edm_sigma == pytest.approx(np.sqrt(3.0))
    assert gs.flow(1.0).edm_sigma == np.inf


def test_kdiffusion_skip(toy):
    model, ref = toy
    sigmas = gs.karras_sigmas(10)
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32) * 80
    xs, rest = gs.kdiffusion_skip(model, x, sigmas, 3)
    assert rel_err(xs, ref.skip(x, sigmas[0], sigmas[3])) <= 1e-5
    np.testing.assert_array_equal(rest, sigmas[3:])
    same, all_ = gs.kdiffusion_skip(model, x, sigmas, 0)
    assert same is x and all_ is sigmas
    with pytest.raises(ValueError, match="at least one step"):
        gs.kdiffusion_skip(model, x, sigmas, 10)


def test_choose_skip_bounds(toy):
    model, _ = toy
    sigmas = [80.0, 40.0, 20.0, 10.0, 5.0, 0.0]
    x = np.ones((2, 20), np.float32) * 3
    assert gs.choose_skip(model, x, sigmas, sigma_floor=20.0).k == 2
    assert gs.choose_skip(model, x, sigmas, sigma_floor=19.9).k == 2
    assert gs.choose_skip(model, x, sigmas, sigma_floor=100.0).k == 0
    assert gs.choose_skip(model, x, sigmas, sigma_floor=0.0).k == 4  # one step always remains
    assert gs.choose_skip(model, x, sigmas, max_jump=1).k == 1
    assert gs.choose_skip(model, x, sigmas, sigma_floor=5.0, max_jump=3).k == 3
    c = gs.choose_skip(model, x, sigmas, max_jump=0)
    assert c.k == 0 and c.x is x and c.sigmas == sigmas
    with pytest.raises(ValueError, match="sigma_floor, max_jump"):
        gs.choose_skip(model, x, sigmas)
    with pytest.raises(ValueError, match="non-increasing"):
        gs.choose_skip(model, x, [1.0, 2.0, 0.0], max_jump=1)


def test_edm_sampler_skip_restarts_on_the_grid(toy):
    model, ref = toy
    lat = np.random.default_rng(1).standard_normal((4, 20))
    for n, k in [(18, 4), (10, 1), (40, 12), (5, 3)]:
        out, kw = gs.edm_sampler_skip(model, lat, k, num_steps=n)
        full = gs.karras_sigmas(n)
        np.testing.assert_allclose(gs.karras_sigmas(kw["num_steps"], kw["sigma_min"], kw["sigma_max"], kw["rho"]), full[k:], rtol=1e-12)
        assert rel_err(out * kw["sigma_max"], ref.skip(lat * 80.0, 80.0, full[k])) <= 1e-5
    with pytest.raises(ValueError):
        gs.edm_sampler_skip(model, lat, 17, num_steps=18)


class FakeHeunScheduler:
    """diffusers' HeunDiscreteScheduler layout: order 2, sigmas and timesteps interleaved."""

    order = 2
    init_noise_sigma = 80.0

    def __init__(self, n):
        s = gs.karras_sigmas(n)
        self.sigmas = np.concatenate([s[:1], np.repeat(s[1:-1], 2), s[-1:]])
        t = np.arange(n, 0, -1) * 10.0
        self.timesteps = np.concatenate([t[:1], np.repeat(t[1:], 2)])
        self.begin = None

    def set_begin_index(self, i):
        self.begin = i


class FakeDDIM:
    """A VP scheduler without sigmas: alphas_cumprod indexed by integer timesteps."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self):
        self.alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
        self.timesteps = np.arange(999, -1, -100)
        self.begin = None

    def set_begin_index(self, i):
        self.begin = i


class FlowMatchFake:
    order = 1
    init_noise_sigma = 1.0

    def __init__(self):
        self.sigmas = np.linspace(1.0, 0.0, 11)
        self.timesteps = self.sigmas[:-1] * 1000
        self.begin = None

    def set_begin_index(self, i):
        self.begin = i


def test_diffusers_skip_orders_and_parameterizations(toy):
    model, ref = toy
    x = np.random.default_rng(2).standard_normal((3, 20)).astype(np.float32)

    heun = FakeHeunScheduler(10)
    out, ts = gs.diffusers_skip(model, heun, x * 80, 3)
    assert heun.begin == 6 and len(ts) == len(heun.timesteps) - 6
    assert heun.sigmas[6] == gs.karras_sigmas(10)[3]  # step k of the plain schedule
    assert rel_err(out, ref.skip(x * 80, 80.0, heun.sigmas[6])) <= 1e-5

    ddim = FakeDDIM()
    out, ts = gs.diffusers_skip(model, ddim, x, 2)
    a0, a2 = ddim.alphas_cumprod[999], ddim.alphas_cumprod[799]
    assert ddim.begin == 2 and list(ts) == list(ddim.timesteps[2:])
    assert rel_err(out, ref.skip(x, gs.vp(a0), gs.vp(a2))) <= 1e-5

    fm = FlowMatchFake()
    out, _ = gs.diffusers_skip(model, fm, x, 4)
    assert fm.begin == 4
    assert rel_err(out, ref.skip(x, gs.flow(1.0), gs.flow(0.6))) <= 1e-5

    with pytest.raises(ValueError, match="k \\* order"):
        gs.diffusers_skip(model, FakeHeunScheduler(4), x, 4)

    class NoBeginIndex:  # DDIM/DDPM-like: finds its place from the timestep itself
        order = 1
        init_noise_sigma = 3.0
        timesteps = [3, 2, 1]
        sigmas = [3.0, 2.0, 1.0, 0.0]

    out, ts = gs.diffusers_skip(model, NoBeginIndex(), x * 3, 1)
    assert list(ts) == [2, 1]
    assert rel_err(out, ref.skip(x * 3, 3.0, 2.0)) <= 1e-5


class Config(dict):
    """diffusers' FrozenDict config: a dict."""


class DPMFlowSigmas:
    """DPMSolverMultistepScheduler(use_flow_sigmas=True): VP-looking (init_noise_sigma 1)
    but its sigmas are flow times."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, **config):
        self.config = Config(config)
        self.sigmas = np.linspace(1.0, 0.0, 11)
        self.timesteps = self.sigmas[:-1] * 1000

    def set_begin_index(self, i):
        self.begin = i


def test_flow_configurations_are_detected_from_the_config(toy):
    model, ref = toy
    x = np.random.default_rng(3).standard_normal((2, 20)).astype(np.float32)
    for config in ({"use_flow_sigmas": True}, {"prediction_type": "flow_prediction"}):
        sched = DPMFlowSigmas(**config)
        assert gs.integrations.guess_parameterization(sched) == "flow"
        out, _ = gs.diffusers_skip(model, sched, x, 3)
        assert rel_err(out, ref.skip(x, gs.flow(1.0), gs.flow(0.7))) <= 1e-5
    plain = DPMFlowSigmas(prediction_type="epsilon")
    assert gs.integrations.guess_parameterization(plain) == "vp"
    assert gs.integrations.scheduler_level(plain, 3) == gs.vp(1.0 / (1.0 + 0.7**2))


def test_lms_warns_and_unknown_schedulers_are_refused(toy):
    model, _ = toy
    x = np.ones((2, 20), np.float32)

    class LMSLike(FakeHeunScheduler):
        order = 1
        derivatives = []

        def get_lms_coefficient(self, order, t, current_order):
            return 1.0

    with pytest.warns(UserWarning, match="multistep history"):
        gs.diffusers_skip(model, LMSLike(6), x * 80, 2)

    class Tokens:  # a scheduler of discrete tokens: no Gaussian noise level to read
        order = 1
        timesteps = [3, 2, 1]

    with pytest.raises(TypeError, match="neither `sigmas` nor `alphas_cumprod`"):
        gs.diffusers_skip(model, Tokens(), x, 1)
