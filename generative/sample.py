"""Sample digits from an image-DDPM checkpoint into a PNG grid.

    python -m dpstack.generative.sample [CKPT] --steps 50 --sampler ddim --eta 0 --out grid.png [--label 7
        --guidance 3] [--n 100] [--seed 0]
    python -m dpstack.generative.sample [CKPT] --sampler ddpm --variance fixed_large --steps 0 --out grid.png

CKPT defaults to the shipped ``pretrained/mnist_ddpm.ckpt``. A class-conditional model with no ``--label``
draws one row per class; ``--guidance`` is the classifier-free guidance scale w (1: plain conditional).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpstack.diffusion.checkpoint_io import CheckpointError
from dpstack.generative.checkpoint import load_image_model
from dpstack.generative.image_diffusion import DDPM_VARIANCES
from dpstack.generative.pictures import sample_grid

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_ddpm.ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.sample", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (0: all T)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic given x_T)")
    parser.add_argument("--variance", choices=DDPM_VARIANCES, default=None,
                        help="DDPM's σ²: fixed_small (β̃), fixed_large (β) or learned (hybrid models); "
                             "default: the model's own")
    parser.add_argument("--label", type=int, default=None, help="digit class for every sample")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale w")
    parser.add_argument("--n", type=int, default=100, help="number of samples (10 per row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="samples.png")
    args = parser.parse_args(argv)
    try:
        model = load_image_model(args.checkpoint, args.device)
        path = sample_grid(model, args.out, args.n, args.sampler, args.steps or None, args.eta, args.label,
                           args.guidance, args.seed, args.scale, args.variance)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
