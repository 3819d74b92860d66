"""Latent against pixel diffusion on MNIST: training and sampling time per image (why latent diffusion exists).

    python benchmarks/latent_vs_pixel.py [--pixel pretrained/mnist_ddpm.ckpt] [--latent pretrained/mnist_txt2img.ckpt]
        [--threads 1] [--repeats 5] [--steps 20]

Both models as shipped (their configs' networks), one process, interleaved repeats, medians:
- training: images/s of one optimiser step (forward, backward, AdamW) on batches of 128 training digits; the
  latent model's step includes encoding the batch with its frozen autoencoder;
- sampling: seconds per image for a batch of 100 conditional images with classifier-free guidance (w = 3,
  two network passes per step, DDIM η = 0 at ``--steps``), the latent model's including the text encoder and
  the decoder.
- quality at the same sampler settings (``--quality N``, default 1000): classifier-FID against the held-out
  digits and the classifier's accuracy on the asked-for digit, for N samples of each (pixel: labels 0–9 in
  turn; latent: the evaluation's seen-template prompts for the same digits).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from dpstack.datasets.mnist import MNISTDataset
from dpstack.generative.checkpoint import load_image_model, load_text_to_image
from dpstack.generative.evaluate import cycled_labels, generate, heldout_digits, sample_quality
from dpstack.generative.txt2img_eval import evaluation_prompts
from dpstack.generative.txt2img_eval import generate as generate_from_prompts

BATCH = 128
SAMPLES = 100


def training_rate(model, batches, steps: int) -> float:
    """Images/s over ``steps`` optimiser steps."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    started = time.perf_counter()
    for batch in batches[:steps]:
        loss = model.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return BATCH * steps / (time.perf_counter() - started)


def pixel_sampling(model, steps: int) -> float:
    labels = torch.arange(SAMPLES) % 10
    started = time.perf_counter()
    model.sample(SAMPLES, "ddim", steps, 0.0, labels, 3.0, torch.Generator().manual_seed(0))
    return (time.perf_counter() - started) / SAMPLES


def latent_sampling(model, steps: int) -> float:
    prompts = [f"a handwritten {digit}" for digit in range(10)] * (SAMPLES // 10)
    started = time.perf_counter()
    model.sample(prompts, 3.0, "ddim", steps, 0.0, torch.Generator().manual_seed(0))
    return (time.perf_counter() - started) / SAMPLES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixel", default="pretrained/mnist_ddpm.ckpt")
    parser.add_argument("--latent", default="pretrained/mnist_txt2img.ckpt")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quality", type=int, default=1000, help="samples per model for FID / accuracy (0: skip)")
    args = parser.parse_args()
    data = MNISTDataset("train")
    generator = torch.Generator().manual_seed(0)
    batches = [data.finalize_batch(data.gather(torch.randint(0, len(data), (BATCH,), generator=generator)))
               for _ in range(args.train_steps)]
    models = {"pixel": load_image_model(args.pixel), "latent": load_text_to_image(args.latent)}
    trainable = {name: sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
                 for name, model in models.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"trainable parameters: pixel {trainable['pixel']:.2f} M, latent {trainable['latent']:.2f} M "
          f"(+ frozen autoencoder {sum(p.numel() for p in models['latent'].autoencoder.parameters()) / 1e6:.2f} M)")
    print(f"{'threads':>7} {'train img/s pixel':>18} {'latent':>8} {'ratio':>6} {'sample ms/img pixel':>20} "
          f"{'latent':>8} {'ratio':>6}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model in models.values():  # warm-up
            training_rate(model, batches, 1)
        pixel_sampling(models["pixel"], 2)
        latent_sampling(models["latent"], 2)
        rates, times = {"pixel": [], "latent": []}, {"pixel": [], "latent": []}
        for _ in range(args.repeats):  # interleaved, so that load drift hits both
            for name, model in models.items():
                rates[name].append(training_rate(model, batches, args.train_steps))
            times["pixel"].append(pixel_sampling(models["pixel"], args.steps))
            times["latent"].append(latent_sampling(models["latent"], args.steps))
        rate = {name: statistics.median(values) for name, values in rates.items()}
        seconds = {name: statistics.median(values) for name, values in times.items()}
        print(f"{threads:>7} {rate['pixel']:>18.1f} {rate['latent']:>8.1f} {rate['latent'] / rate['pixel']:>6.2f} "
              f"{1e3 * seconds['pixel']:>20.2f} {1e3 * seconds['latent']:>8.2f} "
              f"{seconds['pixel'] / seconds['latent']:>6.2f}")
    if args.quality:
        torch.set_num_threads(args.threads[0])
        reference, _ = heldout_digits()
        labels = cycled_labels(args.quality, 10)
        pixel = generate(models["pixel"], args.quality, "ddim", args.steps, 0.0, labels, 3.0, seed=0, progress=False)
        prompts, prompt_labels, _ = evaluation_prompts(args.quality, "seen", seed=0)
        latent = generate_from_prompts(models["latent"], prompts, 3.0, "ddim", args.steps, seed=0, progress=False)
        for name, images, asked in (("pixel", pixel, labels), ("latent", latent, prompt_labels)):
            quality = sample_quality(images, reference, asked)
            print(f"{name}: classifier-FID {quality['classifier_fid']:.1f}, {100 * quality['class_accuracy']:.1f} % "
                  f"recognised ({args.quality} samples, DDIM-{args.steps}, w = 3)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
