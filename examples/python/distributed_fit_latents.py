"""Fit the Gaussian of a VAE's latents across GPUs or machines with torch.distributed: every
rank encodes its share of the images with a diffusers AutoencoderKL and streams the latents
into gaussskip's accumulator; `gaussskip.distributed.fit` combines the ranks' statistics
with all-reduces, and every rank gets the same model.

    # 8 GPUs on each of 2 machines, NCCL (run on every machine, --node-rank 0 and 1):
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 examples/python/distributed_fit_latents.py \\
        --pretrained stabilityai/sd-vae-ft-mse --images 1000000 --size 512 \\
        --method sketch --rank 256 --out sd-latents.safetensors

The images here are synthetic (smooth random fields drawn from a seed; replace `Images` with
your dataset) and without --pretrained the AutoencoderKL is randomly initialised (a tiny
configuration, no download). Without torchrun the script starts 3 CPU processes itself
(gloo); --tiny is the size the tests run (2 processes, 96 images). Rank 0 checks the model against a one-process fit
of the very same latents and saves it.

Run: python examples/python/distributed_fit_latents.py --tiny   (after `pip install ./bindings/python`)
"""

import argparse
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

import gaussskip as gs
import gaussskip.distributed


class Images(Dataset):
    """Smooth random RGB images in [-1, 1] (what a VAE takes), the same for a seed and index."""

    def __init__(self, count, size):
        self.count, self.size = count, size

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 + i)
        coarse = torch.rand((3, 4, 4), generator=g) * 2 - 1
        up = torch.nn.functional.interpolate(coarse[None], size=(self.size, self.size), mode="bilinear", align_corners=False)
        return up[0].clamp(-1, 1)


def autoencoder(pretrained):
    from diffusers import AutoencoderKL  # here, so that only the ranks import it

    if pretrained:
        return AutoencoderKL.from_pretrained(pretrained)
    torch.manual_seed(0)  # the same random weights on every rank
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )


def latents(vae, loader, device):
    """Scaled latent means of each batch, as the sampler sees them (a generator: the fit
    streams them, nothing is kept)."""
    scale = vae.config.scaling_factor
    with torch.no_grad():
        for images in loader:
            yield vae.encode(images.to(device)).latent_dist.mean * scale


def run(args):
    cuda = torch.cuda.is_available() and "LOCAL_RANK" in os.environ
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    vae = autoencoder(args.pretrained).to(device).eval()
    # A strided share of the images: uneven counts are fine (DistributedSampler would pad the
    # last batch with repeated images, which would count them twice).
    share = Subset(Images(args.images, args.size), range(rank, args.images, world))
    loader = DataLoader(share, batch_size=args.batch)

    class Latents:
        """Re-iterable: a multi-pass sketch reads the latents once per pass."""

        def __iter__(self):
            return latents(vae, loader, device)

    model = gs.distributed.fit(
        Latents(), rank=args.rank, method=args.method, passes=args.passes, value_space="latent", source=f"{world} ranks"
    )
    if args.check:
        # The very same latents fitted in one process (only sensible at a small size).
        mine = np.concatenate([t.float().cpu().numpy() for t in Latents()]) if len(share) else None
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            alone = gs.fit([x for x in everyone if x is not None], rank=args.rank, method=args.method, passes=args.passes)
            err = float(np.max(np.abs(model.eigvals - alone.eigvals)) / alone.eigvals[0])
            print(f"{world} ranks, {args.images} images -> latents {model.item_shape}, {model.rank} modes")
            print(f"largest eigenvalues: {np.array2string(model.eigvals[:4], precision=4)}")
            print(f"against one process on the same latents: eigenvalues within {err:.1e} of the largest")
            if not err <= 1e-8:
                print("FAILED: the distributed fit differs from the one-process fit")
    if rank == 0:
        model.save(args.out)
        print(f"saved {args.out}")
        print("OK")
    dist.destroy_process_group()


def spawned(index, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE=str(args.procs))
    run(args)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", help="a diffusers AutoencoderKL (hub id or folder); default: random tiny weights")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=8, help="image side in pixels")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rank", type=int, default=None, help="modes to keep (default: all)")
    p.add_argument("--method", choices=["exact", "sketch"], default=None)
    p.add_argument("--passes", type=int, default=None, help="reads of the data for the sketch")
    p.add_argument("--procs", type=int, default=3, help="CPU processes started without torchrun")
    p.add_argument("--check", action="store_true", help="compare with a one-process fit (small sizes only)")
    p.add_argument("--tiny", action="store_true", help="the test's size: 2 processes, 96 images of 8 x 8, checked")
    p.add_argument("--out", default="latents.safetensors")
    args = p.parse_args()
    if args.tiny:
        args.images, args.size, args.batch, args.check, args.procs = 96, 8, 16, True, 2
    if "RANK" in os.environ:
        run(args)  # under torchrun
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(spawned, args=(args, port), nprocs=args.procs, join=True)


if __name__ == "__main__":
    main()
