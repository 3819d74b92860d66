"""Our MNIST DDPM beside lucidrains' ``denoising_diffusion_pytorch`` (a benchmark-only dependency:
``pip install denoising_diffusion_pytorch``), same data, same U-Net widths and the same budget.

    python benchmarks/mnist_ddpm_vs_lucidrains.py speed [--threads 1 2] [--repeats 5]
    python benchmarks/mnist_ddpm_vs_lucidrains.py quality --minutes 10 [--samples 1000]

- ``speed``: training samples/s (forward, backward, AdamW step; batch 128 of MNIST digits, uniform t, T = 1000,
  ε-prediction, linear β) of both, interleaved repeats, medians and their ratio.
  Ours: ``configs/mnist_ddpm.yaml``'s U-Net, unconditional (16/32/64 channels, 0.72 M parameters);
  theirs: ``Unet(dim=16, dim_mults=(1, 2, 4), channels=1)`` (0.72 M parameters).
- ``quality``: each trained for the same wall-clock budget at one thread, then 1,000 DDIM-50 (η = 0) samples
  scored by classifier-FID against the 1,000 held-out digits; ours also reports bits/dim (theirs has no bound).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpstack.datasets.mnist import MNISTDataset, to_model_space
from dpstack.generative.evaluate import bits_per_dim, generate, heldout_digits, sample_quality
from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig
from dpstack.generative.unet2d import UNet2DConfig

BATCH = 128


def ours():
    torch.manual_seed(0)
    unet = UNet2DConfig(base_channels=16, channel_mults=(1, 2, 4), attention_resolutions=(7,), num_classes=None)
    model = ImageDiffusion(ImageDiffusionConfig(unet=unet))
    return model, lambda images: model.compute_loss({"image": images, "label": None})


def theirs():
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    torch.manual_seed(0)
    network = Unet(dim=16, dim_mults=(1, 2, 4), channels=1)
    model = GaussianDiffusion(network, image_size=28, timesteps=1000, sampling_timesteps=50, objective="pred_noise",
                              beta_schedule="linear")
    return model, lambda images: model((images + 1) / 2)  # it normalises [0, 1] to [−1, 1] itself


def train_steps(loss_fn, parameters, images, steps: int, optimizer=None) -> float:
    """Seconds for ``steps`` optimiser steps on random batches of ``images``."""
    optimizer = optimizer or torch.optim.AdamW(parameters, lr=1e-3)
    started = time.perf_counter()
    for _ in range(steps):
        batch = images[torch.randint(0, len(images), (BATCH,))]
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def speed(args, images) -> None:
    print(f"training samples/s, batch {BATCH}, median of {args.repeats} repeats of {args.steps} steps")
    print(f"{'threads':>7} {'ours':>8} {'lucidrains':>11} {'ours/theirs':>12}   params ours / theirs")
    for threads in args.threads:
        torch.set_num_threads(threads)
        (mine, my_loss), (other, other_loss) = ours(), theirs()
        optimizers = [torch.optim.AdamW(mine.parameters(), 1e-3), torch.optim.AdamW(other.parameters(), 1e-3)]
        train_steps(my_loss, None, images, 2, optimizers[0])  # warm-up
        train_steps(other_loss, None, images, 2, optimizers[1])
        rates = {"ours": [], "theirs": []}
        for _ in range(args.repeats):  # interleaved, so that load drift hits both
            rates["ours"].append(BATCH * args.steps / train_steps(my_loss, None, images, args.steps, optimizers[0]))
            rates["theirs"].append(BATCH * args.steps / train_steps(other_loss, None, images, args.steps,
                                                                    optimizers[1]))
        a, b = statistics.median(rates["ours"]), statistics.median(rates["theirs"])
        count = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (mine, other)]
        print(f"{threads:>7} {a:>8.1f} {b:>11.1f} {a / b:>12.2f}   {count[0]:.3f} M / {count[1]:.3f} M")


def quality(args, images) -> None:
    torch.set_num_threads(1)
    reference, _ = heldout_digits()
    for name, build in (("ours", ours), ("lucidrains", theirs)):
        model, loss_fn = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < 60 * args.minutes:
            train_steps(loss_fn, None, images, 10, optimizer)
            steps += 10
        model.eval()
        torch.manual_seed(1)
        if name == "ours":
            samples = generate(model, args.samples, "ddim", 50, 0.0, seed=1, progress=False)
            extra = bits_per_dim(model, reference[:args.bpd_images], progress=False)
            extra = f", {extra['bits_per_dim']:.3f} ± {extra['bits_per_dim_stderr']:.3f} bits/dim " \
                    f"({args.bpd_images} digits)"
        else:
            with torch.no_grad():
                samples = torch.cat([model.sample(batch_size=min(500, args.samples - i))
                                     for i in range(0, args.samples, 500)]) * 2 - 1
            extra = ", no likelihood"
        fid = sample_quality(samples, reference)["classifier_fid"]
        print(f"{name}: {steps} steps ({steps * BATCH / 9000:.1f} epochs) in {args.minutes} min, "
              f"classifier-FID {fid:.2f} ({args.samples} DDIM-50 samples){extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["speed", "quality"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--bpd-images", type=int, default=100)
    args = parser.parse_args()
    images = to_model_space(MNISTDataset("train").images)
    speed(args, images) if args.part == "speed" else quality(args, images)


if __name__ == "__main__":
    main()
