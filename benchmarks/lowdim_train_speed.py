"""Training-step cost of the low-dim policy on CPU: U-Net widths, torch threads, bf16 autocast (batch 256).

    python benchmarks/lowdim_train_speed.py [--widths W [W ...]] [--threads N [N ...]]
        [--precisions {fp32,bf16} [...]] [--repeats 1] [--steps 12] [--warmup 2]

A step is ``compute_loss`` + backward + AdamW on a synthetic batch of the dataset's shapes
((256, 16, 20) observations, (256, 16, 2) actions); weights are random (cost does not depend on
them); a width's step embedding is the configs' pairing below, 64 for other widths. Every
(width, threads, precision) setting is timed ``--repeats`` times, the settings taking
turns so that a drift of the machine's speed hits all of them alike; one repeat is the median of the
timed steps after ``--warmup`` untimed ones, and a row is the median over repeats. The ratio is each
row's time over the first row's, measured in the same run. ``bf16`` runs the forward pass and loss
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights and optimizer stay fp32).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time

import torch

from inference_latency import random_policy  # same folder: run as python benchmarks/lowdim_train_speed.py

STEP_EMBED_DIM = {(32, 64, 128): 32, (48, 96, 192): 48, (64, 128, 256): 64}  # the configs' pairings


def step_seconds(down_dims: tuple[int, ...], threads: int, precision: str, steps: int,
                 warmup: int) -> tuple[float, float]:
    """Median wall seconds of one training step at the given setting, and the U-Net's parameters (millions)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    policy = random_policy(down_dims=down_dims, diffusion_step_embed_dim=STEP_EMBED_DIM.get(down_dims, 64)).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    batch = {"obs": torch.rand(256, 16, 20) * 512, "action": torch.rand(256, 16, 2) * 512}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    timings = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast:
            loss = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings), sum(p.numel() for p in policy.model.parameters()) / 1e6


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split("/"))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"width {text!r} is not like 64/128/256")
    return widths


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=parse_widths, nargs="+", default=list(STEP_EMBED_DIM))
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1])
    parser.add_argument("--precisions", choices=["fp32", "bf16"], nargs="+", default=["fp32"])
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--steps", type=positive_int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    unique = [list(dict.fromkeys(values)) for values in (args.widths, args.threads, args.precisions)]
    settings = list(itertools.product(*unique))
    timings: dict[tuple, list[float]] = {setting: [] for setting in settings}
    n_params: dict[tuple[int, ...], float] = {}
    for _ in range(args.repeats):
        for setting in settings:
            seconds, n_params[setting[0]] = step_seconds(*setting, args.steps, args.warmup)
            timings[setting].append(seconds)
    print(f"batch 256; per repeat the median of {args.steps} steps; row = median of {args.repeats} repeats")
    print(f"{'down_dims':<12} {'params':>7} {'threads':>7} {'prec':>5} {'ms/step':>8} {'repeats (ms)':<24} "
          f"{'samples/s':>9} {'ratio':>6}")
    baseline = statistics.median(timings[settings[0]])
    for setting in settings:
        down_dims, threads, precision = setting
        seconds = statistics.median(timings[setting])
        repeats = " ".join(f"{t * 1e3:.0f}" for t in timings[setting])
        print(f"{'/'.join(map(str, down_dims)):<12} {n_params[down_dims]:>6.2f}M {threads:>7} {precision:>5} "
              f"{seconds * 1e3:>8.1f} {repeats:<24} {256 / seconds:>9.0f} {seconds / baseline:>5.2f}x")


if __name__ == "__main__":
    main()
