"""Per-chunk inference latency at batch 1 on CPU: observation in, a chunk of actions out.

    python benchmarks/inference_latency.py [--calls 50] [--threads 1 2] [--checkpoint pretrained/pusht_lowdim.ckpt]
        [--distilled pretrained/pusht_lowdim_distilled.ckpt]

Rows: the paper's low-dim configuration (down_dims 256/512/1024, DDPM-100) with random weights,
the same network with DDIM-10, the shipped checkpoint with its own sampler, eager and traced
(``load_policy(..., optimize=True)``), its exports (``python -m dpstack.policy.export``: ONNX through
onnxruntime, when installed, and TorchScript, written to a temporary folder), traced with the full
DDPM-100 chain (and with fewer DDIM steps on a shifted grid, ``--shifted-ddim STEPS:OFFSET``), and the
policy distilled from it (``policy/distillation.py``; its own calls per chunk unless
``--distilled-steps`` says otherwise), traced.
Each row is the median of ``--calls`` timed ``predict_action`` calls after 3 warm-up calls; every row is
measured at each ``--threads`` value in turn, and the ratio column divides by the shipped checkpoint's
traced row at the same thread count. The load average at the start and end is printed: other work on the
machine slows every row.
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


def unet_millions(policy: DiffusionUnetPolicy) -> float:
    return sum(p.numel() for p in policy.model.parameters()) / 1e6


def policy_rows(args, threads: int) -> list[tuple[str, object, int, float]]:
    """(label, policy, calls, U-Net parameters in millions) of every row, exports opened for ``threads`` threads."""
    paper = random_policy()
    rows = [("paper config, DDPM-100", paper, args.paper_calls, unet_millions(paper)),
            ("paper config, DDIM-10", random_policy(sampler="ddim", num_inference_steps=10), args.calls,
             unet_millions(paper))]
    if args.checkpoint.exists():
        shipped = load_policy(args.checkpoint)
        size, label = unet_millions(shipped), f"shipped {args.checkpoint.name}"
        name = f"{label}, {shipped.config.sampler.upper()}-{shipped.config.num_inference_steps}"
        rows.append((name, shipped, args.calls, size))
        rows.append((name + ", traced", load_policy(args.checkpoint, optimize=True), args.calls, size))
        folder = Path(tempfile.mkdtemp())
        formats = ["onnx"] if importlib.util.find_spec("onnxruntime") else []
        for fmt in formats + ["torchscript"]:
            path = export(shipped, folder / ("policy.onnx" if fmt == "onnx" else "policy.pt"), fmt)
            rows.append((f"{name}, exported {fmt}", ExportedPolicy(path, threads=threads), args.calls, size))
        full_chain = load_policy(args.checkpoint, optimize=True)
        full_chain.reconfigure(sampler="ddpm", num_inference_steps=100)
        rows.append((f"{label}, DDPM-100, traced", full_chain, args.paper_calls, size))
        for steps, offset in args.shifted_ddim:
            shifted = load_policy(args.checkpoint, optimize=True)
            shifted.reconfigure(sampler="ddim", num_inference_steps=steps, ddim_steps_offset=offset)
            rows.append((f"{label}, DDIM-{steps} offset {offset}, traced", shifted, args.calls, size))
    if args.distilled.exists():
        student = load_policy(args.distilled)
        size, sampler = unet_millions(student), student.config.sampler
        for steps in args.distilled_steps or [student.config.num_inference_steps]:
            policy = load_policy(args.distilled, optimize=True)
            policy.reconfigure(num_inference_steps=steps)
            rows.append((f"distilled {args.distilled.name}, {sampler}-{steps}, traced", policy, args.calls, size))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--paper-calls", type=int, default=10, help="calls for the slow DDPM-100 rows")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--checkpoint", type=Path, default=Path("pretrained/pusht_lowdim.ckpt"))
    parser.add_argument("--shifted-ddim", type=lambda text: tuple(int(v) for v in text.split(":")), nargs="*",
                        default=[], metavar="STEPS:OFFSET",
                        help="extra rows: the shipped file with fewer DDIM steps on a shifted grid, e.g. 4:15")
    parser.add_argument("--distilled", type=Path, default=Path("pretrained/pusht_lowdim_distilled.ckpt"),
                        help="a policy distilled from --checkpoint (rows skipped when the file is missing)")
    parser.add_argument("--distilled-steps", type=int, nargs="+", default=None,
                        help="U-Net calls per chunk of the distilled rows (default: the file's own)")
    args = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, cpus={os.cpu_count()}, "
          f"torch {torch.__version__}, loadavg(1m) at start={os.getloadavg()[0]:.2f}")
    print(f"{'policy':<64} {'params':>8} " + " ".join(f"{f'{n} thr ms':>10} {'ratio':>6}" for n in args.threads))
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = policy_rows(args, threads)
        results[threads] = [latency_ms(policy, calls) for _, policy, calls, _ in rows]
    baseline = next((i for i, (name, *_) in enumerate(rows) if name.startswith("shipped") and name.endswith("traced")
                     and "DDPM-100" not in name), None)
    for i, (name, _, _, n_params) in enumerate(rows):
        cells = []
        for threads in args.threads:
            ms = results[threads][i]
            ratio = f"{ms / results[threads][baseline]:.3f}" if baseline is not None else "–"
            cells.append(f"{ms:>10.1f} {ratio:>6}")
        print(f"{name:<64} {n_params:>7.2f}M " + " ".join(cells))
    print(f"loadavg(1m) at end={os.getloadavg()[0]:.2f} (above ~0.5 per core, other work shared the machine)")


if __name__ == "__main__":
    main()
