"""diffusers schedulers and pipelines with the jump (needs torch and diffusers; LMS needs
scipy, the pipeline test transformers). Skips with the reason otherwise.

The network is the exact one for Gaussian data: the model's own denoiser, turned into what
the scheduler expects (epsilon, v, sample or flow velocity) at the level diffusers itself
assigns to the model input. So the full loop converges to the exact PF-ODE map, and a
correct jump lands on the same path: jump + loop must agree with the full loop (and with
the exact answer) up to the loop's own discretisation error.
"""

import warnings

import numpy as np
import pytest

import gaussskip as gs
from conftest import make_parts

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")

ITEM = (4, 4, 4)

# diffusers' own schedulers call np.array on tensors in a way NumPy 2 deprecates: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def rel_err(a, b):
    a, b = (np.asarray(v.detach().double()) if hasattr(v, "detach") else np.asarray(v, np.float64) for v in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def init_noise_sigma(s):
    return float(getattr(s, "init_noise_sigma", 1.0))


@pytest.fixture(scope="module")
def model():
    return gs.Model.from_arrays(*make_parts(64, 64, 0.0, seed=51, spread=2.0))


def input_level(s, i, t):
    """(alpha, sigma) of the model input at loop index i, from diffusers' own conventions."""
    name = type(s).__name__
    sigmas = getattr(s, "sigmas", None)
    if "FlowMatch" in name:
        sg = float(sigmas[i])
        return 1.0 - sg, sg
    if hasattr(s, "_sigma_to_alpha_sigma_t") and sigmas is not None:  # DPM-Solver, UniPC
        a, sg = s._sigma_to_alpha_sigma_t(sigmas[i])
        return float(a), float(sg)
    if sigmas is not None and init_noise_sigma(s) > 1.0:  # Euler/Heun/LMS: x / sqrt(1 + sigma^2)
        sg = float(sigmas[i])
        return 1.0 / np.sqrt(1.0 + sg * sg), sg / np.sqrt(1.0 + sg * sg)
    a_bar = float(s.alphas_cumprod[int(t)])  # DDIM, DDPM, PNDM
    return np.sqrt(a_bar), np.sqrt(1.0 - a_bar)


class GaussianNet:
    """The exact network output for the model's Gaussian, counting evaluations."""

    def __init__(self, model, scheduler):
        self.model, self.s, self.calls = model, scheduler, 0

    def __call__(self, x_in, t, i):
        self.calls += 1
        a, sg = input_level(self.s, i, t)
        d = self.model.denoise(x_in, gs.Noise(a, sg))
        eps = (x_in - a * d) / sg
        kind = "flow_prediction" if "FlowMatch" in type(self.s).__name__ else self.s.config.prediction_type
        return {"epsilon": eps, "v_prediction": a * eps - sg * d, "sample": d, "flow_prediction": eps - d}[kind]


def run_loop(s, net, latents, timesteps, offset=0):
    for j, t in enumerate(timesteps):
        x_in = s.scale_model_input(latents, t) if hasattr(s, "scale_model_input") else latents
        latents = s.step(net(x_in, t, offset + j), t, latents).prev_sample
    return latents


def initial_and_exact(model, s, noise):
    """The state at timesteps[0] as a pipeline prepares it, and the exact end of its ODE."""
    state = noise * init_noise_sigma(s)
    if "FlowMatch" in type(s).__name__ or s.config.get("use_flow_sigmas", False):
        start = gs.flow(float(s.sigmas[0]))
    elif init_noise_sigma(s) > 1.0:
        start = gs.Noise(1.0, float(s.sigmas[0]))
    else:
        a, sg = input_level(s, 0, s.timesteps[0])
        start = gs.Noise(a, sg)
    return state, model.skip(state, start, gs.Noise(1.0, 0.0))


SCHEDULERS = [
    ("EulerDiscreteScheduler", {}, 25, 6),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, 25, 6),
    ("HeunDiscreteScheduler", {}, 18, 4),
    ("DPMSolverMultistepScheduler", {}, 20, 5),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, 20, 5),
    ("UniPCMultistepScheduler", {}, 20, 5),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, 20, 5),
    ("DDIMScheduler", {"clip_sample": False}, 30, 6),
    ("DDIMScheduler", {"clip_sample": False, "prediction_type": "v_prediction"}, 30, 6),
    ("DDPMScheduler", {"clip_sample": False}, 50, 10),
    ("PNDMScheduler", {"skip_prk_steps": True}, 30, 6),
    ("FlowMatchEulerDiscreteScheduler", {}, 25, 6),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, 25, 6),
]


@pytest.mark.parametrize("name,config,n,k", SCHEDULERS, ids=lambda v: str(v))
def test_jump_then_loop_follows_the_full_loop(model, name, config, n, k):
    s = getattr(diffusers, name)(**config)
    noise = torch.randn((8, *ITEM), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    s.set_timesteps(n)
    latents, exact = initial_and_exact(model, s, noise)
    net = GaussianNet(model, s)
    full = run_loop(s, net, latents, s.timesteps)
    full_calls, net.calls = net.calls, 0

    s.set_timesteps(n)
    jumped, timesteps = gs.diffusers_skip(model, s, latents, k)
    order = getattr(s, "order", 1)
    out = run_loop(s, net, jumped, timesteps, offset=0 if name == "PNDMScheduler" else k * order)
    assert full_calls - net.calls == k * order  # NFE saved
    err_full, err_jump, gap = rel_err(full, exact), rel_err(out, exact), rel_err(out, full)
    # DDPM is stochastic (the two loops draw different noise); the rest are ODE solvers.
    if name != "DDPMScheduler":
        assert err_jump <= 1.25 * err_full + 1e-4, (err_full, err_jump, gap)
        assert gap <= 2.0 * err_full + 1e-4, (err_full, err_jump, gap)


def test_flow_sigmas_guessed_as_vp_would_be_far_off(model):
    """Without the config check, DPM-Solver with flow sigmas would be read as VP."""
    s = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    s.set_timesteps(20)
    noise = torch.randn((8, *ITEM), generator=torch.Generator().manual_seed(2))
    latents, exact = initial_and_exact(model, s, noise)
    right = gs.diffusers_skip(model, s, latents, 5)[0]
    s.set_timesteps(20)
    wrong = gs.diffusers_skip(model, s, latents, 5, parameterization="vp")[0]
    s.set_timesteps(20)
    at_k = model.skip(latents, gs.flow(float(s.sigmas[0])), gs.flow(float(s.sigmas[5])))
    assert rel_err(right, at_k) <= 1e-5
    assert rel_err(wrong, at_k) > 1e-2


def test_lms_warns_and_is_worse_after_the_jump(model):
    pytest.importorskip("scipy", reason="LMSDiscreteScheduler needs scipy")
    s = diffusers.LMSDiscreteScheduler()
    noise = torch.randn((8, *ITEM), generator=torch.Generator().manual_seed(3))
    s.set_timesteps(20)
    latents, exact = initial_and_exact(model, s, noise)
    net = GaussianNet(model, s)
    full = run_loop(s, net, latents, s.timesteps)
    s.set_timesteps(20)
    with pytest.warns(UserWarning, match="multistep history"):
        jumped, timesteps = gs.diffusers_skip(model, s, latents, 6)
    out = run_loop(s, net, jumped, timesteps, offset=6)
    # The reason for the warning, measured: the restarted history costs accuracy.
    assert rel_err(out, exact) > rel_err(full, exact)


def test_pipeline_arguments_restart_the_schedule_like_the_begin_index_route(model):
    """diffusers_pipeline_skip's sigmas=/timesteps= and latents= reproduce the loop that
    jumps and continues with set_begin_index, for the schedulers that accept them."""
    noise = torch.randn((4, *ITEM), generator=torch.Generator().manual_seed(4))
    for name, config in [
        ("EulerDiscreteScheduler", {}),
        ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("DPMSolverMultistepScheduler", {}),
        ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
        ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
        ("HeunDiscreteScheduler", {}),
        ("DDPMScheduler", {}),
    ]:
        s = getattr(diffusers, name)(**config)
        kw = gs.diffusers_pipeline_skip(model, s, noise, 5, 20)
        assert set(kw) in ({"sigmas", "latents"}, {"timesteps", "latents"}), name
        # What a pipeline does with them: set_timesteps(**rest), latents * init_noise_sigma.
        piped = getattr(diffusers, name)(**config)
        rest = {key: v for key, v in kw.items() if key != "latents"}
        piped.set_timesteps(**rest)
        start = kw["latents"] * init_noise_sigma(piped)
        s.set_timesteps(20)
        x0 = noise * init_noise_sigma(s)
        ref_start, _ = gs.diffusers_skip(model, s, x0, 5)
        assert rel_err(start, ref_start) <= 1e-5, name
        if name == "DDPMScheduler":
            continue  # stochastic steps
        a = run_loop(piped, GaussianNet(model, piped), start, piped.timesteps)
        b = run_loop(s, GaussianNet(model, s), ref_start, s.timesteps[5 * s.order :], offset=5 * s.order)
        assert rel_err(a, b) <= 1e-5, name


def test_pipeline_arguments_refuse_what_cannot_restart(model):
    s = diffusers.DDIMScheduler()  # takes neither sigmas= nor timesteps=
    with pytest.raises(ValueError, match="cannot restart at step 3"):
        gs.diffusers_pipeline_skip(model, s, torch.zeros((1, *ITEM)), 3, 20)


def test_a_tiny_stable_diffusion_pipeline_with_the_jump(model):
    """A randomly initialised UNet2DConditionModel in StableDiffusionPipeline: pipe(...)
    with the helper's arguments runs k fewer UNet evaluations and gives the same latents as
    the begin-index route through the same UNet."""
    pytest.importorskip("transformers", reason="StableDiffusionPipeline needs transformers")
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    calls = []
    unet.register_forward_hook(lambda *_: calls.append(1))
    scheduler = diffusers.EulerDiscreteScheduler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline(
            vae=None,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    embeds = torch.randn((2, 3, 8), generator=torch.Generator().manual_seed(5))
    noise = torch.randn((2, *ITEM), generator=torch.Generator().manual_seed(6))
    common = dict(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), guidance_scale=3.0, output_type="latent", height=4 * 8, width=4 * 8)
    n, k = 12, 3
    with torch.no_grad():
        full = pipe(latents=noise, num_inference_steps=n, **common).images
        full_calls = len(calls)
        calls.clear()
        skipped = pipe(**gs.diffusers_pipeline_skip(model, pipe, noise, k, n), **common).images
    assert full_calls - len(calls) == k and full.shape == skipped.shape

    # The same jump through the begin-index route, in a hand-written loop of the pipeline's
    # classifier-free guidance with the same UNet.
    s = diffusers.EulerDiscreteScheduler()
    s.set_timesteps(n)
    x, timesteps = gs.diffusers_skip(model, s, noise * init_noise_sigma(s), k)
    cond = torch.cat([torch.zeros_like(embeds), embeds])
    with torch.no_grad():
        for t in timesteps:
            inp = s.scale_model_input(torch.cat([x, x]), t)
            uncond, text = unet(inp, t, encoder_hidden_states=cond).sample.chunk(2)
            x = s.step(uncond + 3.0 * (text - uncond), t, x).prev_sample
    assert rel_err(skipped, x) <= 1e-5
