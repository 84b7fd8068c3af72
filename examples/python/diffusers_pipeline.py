"""diffusers pipelines: the keyword arguments that make `pipe(...)` skip its first k steps.

    kw = gs.diffusers_pipeline_skip(model, pipe, noise, k=6, num_inference_steps=30)
    image = pipe(prompt, **kw).images[0]        # kw: sigmas= (or timesteps=) and latents=

`noise` is the unit Gaussian latent the pipeline would draw itself. The helper jumps it
from step 0 to step k of the scheduler's schedule and returns the rest of the schedule
with `latents = x_skip / init_noise_sigma` (the pipeline multiplies by it).

With a real checkpoint and a model fitted to its latents (VAE latents x scaling factor):

    pipe = StableDiffusionPipeline.from_pretrained("...")     # any UNet pipeline
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    model = gs.Model.load("sd-latents.safetensors")           # dim = 4 * 64 * 64

Here a randomly initialised tiny UNet stands in for the checkpoint (no download), and the
example checks that the pipeline runs k fewer UNet evaluations. Needs torch, diffusers and
transformers.

Run: python examples/python/diffusers_pipeline.py   (after `pip install ./bindings/python`)
"""

import warnings

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

import gaussskip as gs
from _toy import check


def tiny_pipeline():
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no safety checker, no text encoder: embeddings are given
        return StableDiffusionPipeline(
            vae=None,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=EulerDiscreteScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def main():
    pipe = tiny_pipeline()
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    model = gs.Model.from_arrays(np.zeros(64), np.geomspace(4.0, 0.01, 64), q.T)  # latents (4, 4, 4)

    embeds = torch.randn((1, 3, 8), generator=torch.Generator().manual_seed(1))
    noise = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(2))
    common = dict(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), output_type="latent", height=32, width=32)
    n, k = 30, 6
    with torch.no_grad():
        pipe(latents=noise, num_inference_steps=n, **common)
        full = len(calls)
        calls.clear()
        kw = gs.diffusers_pipeline_skip(model, pipe, noise, k, n)
        latents = pipe(**kw, **common).images
    print(f"arguments: {sorted(kw)}; schedule restarts at sigma {float(kw['sigmas'][0]):.4g}")
    print(f"UNet evaluations: {full} -> {len(calls)}")
    check(len(calls) == full - k, f"{k} fewer UNet evaluations")
    check(bool(torch.isfinite(latents).all()), "the pipeline ran to the end")
    print("OK")


if __name__ == "__main__":
    main()
