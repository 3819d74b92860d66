"""Draw digits from a text prompt with the latent text-to-image model into a PNG.

    python -m dpstack.generative.txt2img "a handwritten seven" [--guidance 3] [--steps 20] [--seed 0]
        [--n 8] [--out seven.png] [--checkpoint CKPT]

CKPT defaults to the shipped ``pretrained/mnist_txt2img.ckpt``. ``--guidance`` is the classifier-free
guidance scale w (0: ignore the prompt, 1: plain conditional, > 1: follow it more closely). Prompts are
lower-cased; letters, digits, spaces and ,.'-!? are understood, at most 40 characters; the empty prompt ""
draws unconditional digits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dpstack.diffusion.checkpoint_io import CheckpointError
from dpstack.generative.checkpoint import load_text_to_image
from dpstack.generative.pictures import save_png, tile

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_txt2img.ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpstack.generative.txt2img", description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale w")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (0: all T)")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic given z_T)")
    parser.add_argument("--n", type=int, default=8, help="number of images (8 per row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling of the PNG")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="txt2img.png")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        if not Path(args.checkpoint).is_file():
            raise CheckpointError(f"checkpoint {args.checkpoint} does not exist; train one with python train.py "
                                  "--config-name=mnist_txt2img and pass --checkpoint <run>/checkpoints/latest.ckpt")
        model = load_text_to_image(args.checkpoint, args.device)
        generator = torch.Generator(device=model.device).manual_seed(args.seed)
        images = model.sample([args.prompt] * args.n, args.guidance, args.sampler, args.steps or None, args.eta,
                              generator)
        path = save_png(tile(images, min(args.n, 8), args.scale), args.out)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
