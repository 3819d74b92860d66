"""CPU cost of the image encoder's training crop: ``crop_windows`` against an element-wise gather baseline.

    python benchmarks/crop_speed.py [--batch 128] [--repeats 21] [--threads 1]

Both take one random 84×84 window per 96×96 image (a training batch of 64 windows × 2 observation steps is 128
images) and must return the same tensor. The baseline indexes rows, columns, samples and channels with four
broadcast index tensors (the encoder's crop before 2026-12-07). Each number is the median of ``--repeats`` calls.
"""
from __future__ import annotations

import argparse

import torch
from image_policy_speed import median_seconds  # this folder is on sys.path when run as a script

from dpstack.policy.vision import crop_windows


def elementwise_gather(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Baseline: ``images[b, c, top[b] + i, left[b] + j]`` with broadcast (N, C, size, size) index tensors."""
    n, channels = images.shape[:2]
    span = torch.arange(size)
    rows = (top[:, None] + span)[:, None, :, None]
    cols = (left[:, None] + span)[:, None, None, :]
    return images[torch.arange(n)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, 96, 96, generator=generator)
    top, left = torch.randint(0, 13, (2, args.batch), generator=generator)
    if not torch.equal(crop_windows(images, top, left, 84), elementwise_gather(images, top, left, 84)):
        raise SystemExit("crop_windows differs from the baseline")
    baseline = 1000 * median_seconds(lambda: elementwise_gather(images, top, left, 84), args.repeats)
    current = 1000 * median_seconds(lambda: crop_windows(images, top, left, 84), args.repeats)
    print(f"batch {args.batch}, threads {args.threads}: element-wise gather {baseline:.2f} ms, "
          f"crop_windows {current:.2f} ms, ratio {baseline / current:.1f}x")


if __name__ == "__main__":
    main()
