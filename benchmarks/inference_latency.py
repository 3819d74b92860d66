"""Per-chunk inference latency at batch 1 on CPU: observation in, 8 actions out.

    python benchmarks/inference_latency.py [--calls 50] [--threads 1] [--checkpoint pretrained/pusht_lowdim.ckpt]

Rows: the paper's low-dim configuration (down_dims 256/512/1024, DDPM-100) with random weights,
the same network with DDIM-10, the shipped checkpoint with its own sampler, eager and traced
(``load_policy(..., optimize=True)``), its exports (``python -m dpstack.policy.export``: ONNX through
onnxruntime, when installed, and TorchScript, written to a temporary folder), and traced with the full
DDPM-100 chain. Each row is the median of ``--calls`` timed ``predict_action`` calls after 3 warm-up calls.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpstack.datasets.normalizer import LinearNormalizer
from dpstack.policy.checkpoint import load_policy
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy
from dpstack.policy.export import ExportedPolicy, export


def random_policy(**overrides) -> DiffusionUnetPolicy:
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit({"obs": rng.uniform(0, 512, (64, 20)).astype(np.float32),
                                         "action": rng.uniform(0, 512, (64, 2)).astype(np.float32)})
    return DiffusionUnetPolicy(DiffusionPolicyConfig(**overrides), normalizer).eval()


def latency_ms(policy: DiffusionUnetPolicy, calls: int) -> float:
    obs = {"obs": torch.rand(1, policy.config.n_obs_steps, 20) * 512}
    generator = torch.Generator().manual_seed(0)
    timings = []
    for i in range(calls + 3):
        start = time.perf_counter()
        policy.predict_action(obs, generator=generator)
        if i >= 3:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--paper-calls", type=int, default=10, help="calls for the slow DDPM-100 paper row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=Path("pretrained/pusht_lowdim.ckpt"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("paper config, DDPM-100", random_policy(), args.paper_calls),
            ("paper config, DDIM-10", random_policy(sampler="ddim", num_inference_steps=10), args.calls)]
    if args.checkpoint.exists():
        shipped = load_policy(args.checkpoint)
        label = f"shipped {args.checkpoint.name}"
        name = f"{label}, {shipped.config.sampler.upper()}-{shipped.config.num_inference_steps}"
        rows.append((name, shipped, args.calls))
        rows.append((name + ", traced", load_policy(args.checkpoint, optimize=True), args.calls))
        folder = Path(tempfile.mkdtemp())
        formats = ["onnx"] if importlib.util.find_spec("onnxruntime") else []
        for fmt in formats + ["torchscript"]:
            path = export(shipped, folder / ("policy.onnx" if fmt == "onnx" else "policy.pt"), fmt)
            rows.append((f"{name}, exported {fmt}", ExportedPolicy(path, threads=args.threads), args.calls))
        full_chain = load_policy(args.checkpoint, optimize=True)
        full_chain.reconfigure(sampler="ddpm", num_inference_steps=100)
        rows.append((f"{label}, DDPM-100, traced", full_chain, args.paper_calls))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, cpus={os.cpu_count()}, "
          f"torch {torch.__version__}, threads={args.threads}, loadavg(1m) at start={os.getloadavg()[0]:.2f}")
    print(f"{'policy':<58} {'params':>8} {'median ms':>10}")
    n_params = 0.0
    for name, policy, calls in rows:  # traced and exported models list no parameters: the eager row counts
        network = getattr(policy, "model", None)
        n_params = (sum(p.numel() for p in network.parameters()) / 1e6 if network is not None else 0) or n_params
        print(f"{name:<58} {n_params:>7.2f}M {latency_ms(policy, calls):>10.1f}")
    print(f"loadavg(1m) at end={os.getloadavg()[0]:.2f} (above ~0.5 per core, other work shared the machine)")


if __name__ == "__main__":
    main()
