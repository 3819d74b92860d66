"""Training-step cost of the low-dim policy on CPU for several U-Net widths (batch 256).

    python benchmarks/lowdim_train_speed.py [--threads 1] [--steps 12] [--warmup 2]

A step is ``compute_loss`` + backward + AdamW on a synthetic batch of the dataset's shapes
((256, 16, 20) observations, (256, 16, 2) actions); weights are random (cost does not depend on
them). Each row is the median of the timed steps after ``--warmup`` untimed ones; the ratio is
against the first row (the small 32/64/128 U-Net), measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference_latency import random_policy  # same folder: run as python benchmarks/lowdim_train_speed.py

WIDTHS = [((32, 64, 128), 32), ((48, 96, 192), 48), ((64, 128, 256), 64)]  # (down_dims, step embedding)


def step_seconds(down_dims, embed_dim, steps: int, warmup: int) -> tuple[float, float]:
    torch.manual_seed(0)
    policy = random_policy(down_dims=down_dims, diffusion_step_embed_dim=embed_dim).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    batch = {"obs": torch.rand(256, 16, 20) * 512, "action": torch.rand(256, 16, 2) * 512}
    timings = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings), sum(p.numel() for p in policy.model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, batch 256, median of {args.steps} steps")
    print(f"{'down_dims':<16} {'params':>8} {'ms/step':>9} {'samples/s':>10} {'ratio':>6}")
    baseline = None
    for down_dims, embed_dim in WIDTHS:
        seconds, n_params = step_seconds(down_dims, embed_dim, args.steps, args.warmup)
        baseline = baseline or seconds
        print(f"{'/'.join(map(str, down_dims)):<16} {n_params:>7.2f}M {seconds * 1e3:>9.1f} {256 / seconds:>10.0f} "
              f"{seconds / baseline:>5.2f}x")


if __name__ == "__main__":
    main()
