"""Classifier-FID of an image DDPM against sampling steps: DDIM η = 0, 0.5, 1 and DDPM with σ² = β̃ or β.

The shape of Song et al. 2021, Table 1; every cell from the same seeds.

    python benchmarks/mnist_sampler_sweep.py [pretrained/mnist_ddpm.ckpt] [--samples 5000] \\
        [--steps 10 20 50 100 0] [--ledger benchmarks/results/mnist_sampler_sweep.npz] [--max-minutes 60]

Samples are unconditional (the model's ∅ branch); each cell is the Fréchet distance of the MNIST classifier's
features between that cell's samples and the 1,000 held-out digits (steps 0: the full chain of T steps). The
cells' feature moments go chunk by chunk into the ledger (``dpstack.generative.fid_ledger``), so the sweep can be
spread over several runs: run the same command again and it goes on where it stopped. Cells are filled in order
of cost (fewest steps first). DDPM (σ² = β̃) is the update of DDIM η = 1 in exact arithmetic; in floats the two
chains round differently, so DDPM has cells of its own. Prints the table (cells not yet complete show how many
samples they hold). To use several cores, start one process per group of samplers on the same ledger
(``--samplers``), each at ``--threads 1``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpstack.generative.checkpoint import load_image_model
from dpstack.generative.classifier import load_classifier, predict_features
from dpstack.generative.evaluate import heldout_digits, model_fingerprint
from dpstack.generative.fid_ledger import FIDLedger, cell_key

# name: (table label, sampler, η, DDPM's σ² (None: the model's own, β̃ for the shipped model))
SAMPLERS = {"ddim-eta0": ("DDIM η=0", "ddim", 0.0, None), "ddim-eta0.5": ("DDIM η=0.5", "ddim", 0.5, None),
            "ddim-eta1": ("DDIM η=1", "ddim", 1.0, None), "ddpm": ("DDPM", "ddpm", 0.0, None),
            "ddpm-large": ("DDPM σ²=β", "ddpm", 0.0, "fixed_large")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=Path("pretrained/mnist_ddpm.ckpt"), type=Path)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 0], help="0: all T steps")
    parser.add_argument("--ledger", type=Path, default=None, help=".npz of finished chunks (default: none kept)")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop between chunks after this long")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS),
                        help="the samplers this process fills (the others are read from the ledger)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_image_model(args.checkpoint)
    steps = sorted(k or model.config.num_train_timesteps for k in args.steps)
    ledger = FIDLedger(args.ledger, model_fingerprint(model), args.seed, args.chunk_size)
    classifier, _ = load_classifier()
    reference_features = predict_features(classifier, heldout_digits()[0])[0]
    deadline = float("inf") if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    mine = [SAMPLERS[name] for name in args.samplers]
    with tqdm(desc="samples", unit="sample", total=args.samples * len(steps) * len(mine)) as progress:
        for k in steps:
            for _, sampler, eta, variance in mine:
                started = time.perf_counter()
                ledger.fill(model, classifier, sampler, eta, k, args.samples, deadline, progress, variance)
                progress.set_postfix_str(f"{cell_key(sampler, eta, k, variance)} {time.perf_counter() - started:.0f}s")
    ledger.refresh()
    print(f"classifier-FID of {args.samples} unconditional samples vs the 1,000 held-out digits ({args.checkpoint})")
    print(f"{'sampler':<12}" + "".join(f"{k:>16}" for k in steps))
    for label, sampler, eta, variance in SAMPLERS.values():
        cells = []
        for k in steps:
            key = cell_key(sampler, eta, k, variance)
            moments = ledger.cell(key)
            fid = f"{ledger.frechet_distance(key, reference_features):.2f}" if moments.n > 1 else "–"
            cells.append(fid if moments.n >= args.samples else f"{fid} ({moments.n})")
        print(f"{label:<12}" + "".join(f"{cell:>16}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
