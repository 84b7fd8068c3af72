"""gs.calibrate through the C ABI: the result, storage in the model, k="auto", adapters and
errors from the network. The "network" is the model's own Gaussian denoiser (or a perturbed
one), so every run takes well under a second."""

import pickle

import numpy as np
import pytest

import gaussskip as gs
from gaussskip.integrations import edm_sampler_skip, kdiffusion_skip

DIM = 6


def axis_model(dim=DIM):
    vals = 4.0 / (1.0 + np.arange(dim))
    mean = np.linspace(-0.3, 0.3, dim)
    return gs.Model.from_arrays(mean, vals, np.eye(dim), 0.0, item_shape=(dim,))


def gauss_net(model, bend=0.0):
    """The model's denoiser, bent towards 0 by ``bend / (1 + sigma)`` so the network differs
    from the Gaussian more at low noise, like a trained one."""

    def net(x, sigma):
        d = model.denoise(np.asarray(x, np.float32), np.asarray(sigma, np.float64))
        return d * (1.0 - bend / (1.0 + np.asarray(sigma).reshape(-1, 1)))

    return net


SIGMAS = list(gs.karras_sigmas(8))


def noise(rows, seed=0, scale=80.0):
    return scale * np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)


def test_result_and_cost():
    model = axis_model()
    cal = gs.calibrate(model, gauss_net(model, bend=0.05), SIGMAS, noise(8), store=False)
    assert 0 <= cal.k <= len(SIGMAS) - 2
    assert cal.table[0].k == 1 and all(c.nfe_saved == 2 * c.k for c in cal.table)
    assert cal.cost["reference"] == 15 and cal.cost["step_check"] == 29
    assert cal.nfe == cal.cost["reference"] + cal.cost["step_check"] + cal.cost["candidates"]
    assert cal.tolerance_rule == "hand-off" and cal.tolerance == 2.0 and cal.step_error >= 0
    assert all(c.within for c in cal.table[: cal.k])
    for c in cal.table:
        assert c.within == (c.jump_error <= cal.tolerance * c.sampler_error)
    assert len(cal.table) == cal.k + 1 or cal.k == len(SIGMAS) - 2
    assert cal.sigmas[0] == pytest.approx(80.0)
    assert "calibrated k" in str(cal)
    assert "calibration" not in model.metadata


def test_fixed_tolerance_and_full_table():
    model = axis_model()
    cal = gs.calibrate(model, gauss_net(model), SIGMAS, noise(8), store=False, tolerance=1.0, full_table=True)
    assert max(cal.denoiser_gap) < 1e-5  # the network is the Gaussian
    assert cal.tolerance_rule == "fixed" and cal.step_error is None and cal.cost["step_check"] == 0
    assert len(cal.table) == len(SIGMAS) - 2
    assert cal.k == max(c.k for c in cal.table if all(d.within for d in cal.table[: c.k]))
    tight = gs.calibrate(model, gauss_net(model), SIGMAS, noise(8), store=False, tolerance=0.0, max_k=3, full_table=True)
    assert len(tight.table) == 3 and tight.k == 0


def test_stored_saved_and_used_by_k_auto(tmp_path):
    model = axis_model()
    x = noise(4, seed=3)
    with pytest.raises(gs.InvalidArgumentError, match="needs a calibration"):
        kdiffusion_skip(model, x, SIGMAS, "auto")
    cal = gs.calibrate(model, gauss_net(model, bend=0.05), SIGMAS, noise(8))
    assert "calibration" in model.metadata
    assert gs.calibrated_k(model, SIGMAS) == cal.k
    x_auto, rest = kdiffusion_skip(model, x, SIGMAS, "auto")
    x_k, rest_k = kdiffusion_skip(model, x, SIGMAS, cal.k)
    np.testing.assert_array_equal(x_auto, x_k)
    assert list(rest) == list(rest_k)
    # float32 rounding of the schedule still finds it; another sampler does not.
    assert gs.calibrated_k(model, np.asarray(SIGMAS, np.float32)) == cal.k
    with pytest.raises(gs.InvalidArgumentError, match="heun 8 steps"):
        gs.calibrated_k(model, SIGMAS, sampler="euler")

    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = gs.Model.load(path)
    assert gs.calibrated_k(loaded, SIGMAS) == cal.k
    again = pickle.loads(pickle.dumps(loaded))
    assert gs.calibrated_k(again, SIGMAS) == cal.k
    # The model still works after the handle swap.
    np.testing.assert_allclose(loaded.skip(x, 80.0, 10.0), model.skip(x, 80.0, 10.0), rtol=1e-6)


def test_edm_sampler_skip_auto():
    model = axis_model()
    sigmas = list(gs.karras_sigmas(10))
    cal = gs.calibrate(model, gauss_net(model, bend=0.05), sigmas, noise(8))
    latents = noise(2, seed=4, scale=1.0)
    got, kw = edm_sampler_skip(model, latents, "auto", num_steps=10)
    want, kw_k = edm_sampler_skip(model, latents, cal.k, num_steps=10)
    np.testing.assert_array_equal(got, want)
    assert kw == kw_k


def test_network_exceptions_come_back_unchanged():
    model = axis_model()
    calls = []

    def broken(x, sigma):
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("the network broke")
        return np.asarray(x)

    with pytest.raises(KeyError, match="the network broke"):
        gs.calibrate(model, broken, SIGMAS, noise(2))
    with pytest.raises(gs.NonFiniteError, match="denoiser output"):
        gs.calibrate(model, lambda x, s: np.full_like(x, np.nan), SIGMAS, noise(2))
    with pytest.raises(ValueError, match="returned 3 values"):
        gs.calibrate(model, lambda x, s: np.zeros(3, np.float32), SIGMAS, noise(2))
    assert "calibration" not in model.metadata


def test_bad_arguments():
    model = axis_model()
    net = gauss_net(model)
    with pytest.raises(gs.InvalidArgumentError, match="strictly decrease"):
        gs.calibrate(model, net, [80.0, 90.0, 0.0], noise(2))
    with pytest.raises(gs.ShapeMismatchError):
        gs.calibrate(model, net, SIGMAS, np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(gs.InvalidArgumentError, match="sampler"):
        gs.calibrate(model, net, SIGMAS, noise(2), sampler="dpm")
    with pytest.raises(gs.InvalidArgumentError, match="max_k"):
        gs.calibrate(model, net, SIGMAS, noise(2), max_k=0)
    with pytest.raises(gs.InvalidArgumentError, match="Heun runs on EDM levels"):
        gs.calibrate(model, net, gs.flow([1.0, 0.5, 0.0]), noise(2, scale=1.0))


def test_eps_adapter_matches_x0_network():
    model = axis_model()
    x0_net = gauss_net(model, bend=0.05)

    def eps_net(x, sigma):
        s = np.asarray(sigma).reshape(-1, 1)
        return (np.asarray(x) - x0_net(x, sigma)) / s

    a = gs.calibrate(model, x0_net, SIGMAS, noise(8), store=False)
    b = gs.calibrate(model, gs.x0_denoiser(eps_net, "eps"), SIGMAS, noise(8), store=False)
    assert a.k == b.k
    for ca, cb in zip(a.table, b.table):
        assert cb.rms_change == pytest.approx(ca.rms_change, rel=1e-3, abs=1e-6)


def _level_net(model, prediction):
    """A network on VP/flow levels predicting ``prediction`` exactly for Gaussian data."""

    def net(x, level):
        d = model.denoise(np.asarray(x, np.float32), level)
        a, s = level.alpha, level.sigma
        eps = (x - a * d) / s
        return {"eps": eps, "v": a * eps - s * d, "flow": eps - d, "x0": d}[prediction]

    return net


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_levels_with_ddim(prediction):
    model = axis_model()
    bars = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    steps = np.linspace(999, 0, 10).round().astype(int)
    levels = gs.vp(bars[steps]) + [gs.Noise(1.0, 0.0)]
    x = noise(8, scale=1.0)
    cal = gs.calibrate(model, gs.x0_denoiser(_level_net(model, prediction), prediction), levels, x, sampler="ddim")
    assert max(cal.denoiser_gap) < 1e-4
    assert cal.cost["reference"] == 10
    assert gs.calibrated_k(model, levels, sampler="euler") == cal.k


def test_flow_levels_from_pure_noise():
    model = axis_model()
    levels = gs.flow(np.linspace(1.0, 0.0, 9))
    net = gs.x0_denoiser(_level_net(model, "flow"), "flow")
    cal = gs.calibrate(model, net, levels, noise(8, scale=1.0), sampler="euler")
    assert np.isfinite(cal.table[0].sigma)
    assert max(cal.denoiser_gap) < 1e-4


def test_torch_tensors_reach_the_network_as_tensors():
    torch = pytest.importorskip("torch")
    model = axis_model()
    seen = []

    def net(x, sigma):
        seen.append((type(x), x.dtype, sigma.shape))
        return torch.from_numpy(model.denoise(x.numpy(), sigma.double().numpy()))

    cal = gs.calibrate(model, net, SIGMAS, torch.from_numpy(noise(4)), store=False)
    assert cal.k >= 0
    assert all(t is torch.Tensor and d == torch.float32 and s == (4,) for t, d, s in seen)
