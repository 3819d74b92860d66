"""Classifier-FID of an image DDPM against the number of sampling steps, for DDIM η = 0, 0.5, 1 and DDPM
(the shape of Song et al. 2021, Table 1), all from the same seeds.

    python benchmarks/mnist_sampler_sweep.py [pretrained/mnist_ddpm.ckpt] [--samples 5000] [--steps 10 20 50 100 1000]

Samples are unconditional (the model's ∅ branch); each cell is the Fréchet distance of the MNIST classifier's
features between that cell's samples and the 1,000 held-out digits. Also prints seconds per cell.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dpstack.generative.checkpoint import load_image_model
from dpstack.generative.classifier import load_classifier
from dpstack.generative.evaluate import generate, heldout_digits, sample_quality

SAMPLERS = (("DDIM η=0", "ddim", 0.0), ("DDIM η=0.5", "ddim", 0.5), ("DDIM η=1", "ddim", 1.0), ("DDPM", "ddpm", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=Path("pretrained/mnist_ddpm.ckpt"), type=Path)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_image_model(args.checkpoint)
    classifier, _ = load_classifier()
    reference, _ = heldout_digits()
    print(f"classifier-FID of {args.samples} samples vs the 1,000 held-out digits ({args.checkpoint})")
    print(f"{'sampler':<12}" + "".join(f"{k:>14}" for k in args.steps))
    for label, sampler, eta in SAMPLERS:
        cells = []
        for steps in args.steps:
            started = time.perf_counter()
            samples = generate(model, args.samples, sampler, steps, eta, seed=args.seed, progress=False)
            fid = sample_quality(samples, reference, classifier=classifier)["classifier_fid"]
            cells.append(f"{fid:8.2f} ({time.perf_counter() - started:4.0f}s)")
        print(f"{label:<12}" + "".join(f"{cell:>14}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
