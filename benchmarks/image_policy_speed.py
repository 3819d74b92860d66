"""CPU cost of the image Diffusion Policy: one training step at batch 64 and one action chunk at batch 1.

    python benchmarks/image_policy_speed.py [--threads 1 2] [--repeats 5] [--paper-repeats 2] [--sweep]

Rows are composed from the shipped hydra configs (``train_diffusion_unet_hybrid_workspace`` = the
paper, ``pusht_image_cpu``), optionally followed by a sweep of encoder widths and U-Net sizes
(``--sweep``). Weights are random; the normalizer is the dataset's kind (fixed image map, agent_pos
and action in [0, 512]). A training step = ``compute_loss`` + backward + AdamW + EMA update, on a
synthetic batch of the dataset's shapes (B, 16, 3, 96, 96); a chunk = ``predict_action`` in eval mode
on (1, 2, 3, 96, 96). Each number is the median of ``--repeats`` timed calls after one warm-up call.
With ``--data`` the Push-T loader's cost of building one batch of 64 windows is timed as well.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dpstack.datasets.normalizer import LinearNormalizer, unit_range_to_symmetric
from dpstack.diffusion.ema import EMAModel
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SWEEP = [  # (label, overrides on pusht_image_cpu)
    ("enc w8, unet 64/128/256", ["policy.image_encoder.width=8"]),
    ("enc w16, unet 64/128/256", ["policy.image_encoder.width=16"]),
    ("enc w32, unet 64/128/256", ["policy.image_encoder.width=32"]),
    ("enc w64, unet 64/128/256", ["policy.image_encoder.width=64"]),
    ("enc w16, unet 128/256/512", ["policy.image_encoder.width=16", "policy.down_dims=[128,256,512]"]),
    ("enc w16, unet 32/64/128", ["policy.image_encoder.width=16", "policy.down_dims=[32,64,128]"]),
]


def policy_config(config_name: str, overrides=()) -> DiffusionPolicyConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return DiffusionPolicyConfig.from_dict(OmegaConf.to_container(cfg.policy, resolve=True))


def random_policy(config: DiffusionPolicyConfig) -> DiffusionUnetPolicy:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit({"agent_pos": rng.uniform(0, 512, (64, 2)).astype(np.float32),
                                         "action": rng.uniform(0, 512, (64, 2)).astype(np.float32)})
    normalizer["image"] = unit_range_to_symmetric()
    return DiffusionUnetPolicy(config, normalizer)


def synthetic_batch(batch: int, steps: int) -> dict:
    return {"obs": {"image": torch.rand(batch, steps, 3, 96, 96), "agent_pos": torch.rand(batch, steps, 2) * 512},
            "action": torch.rand(batch, steps, 2) * 512}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def train_step_seconds(config: DiffusionPolicyConfig, batch_size: int, repeats: int) -> float:
    policy = random_policy(config).train()
    ema = EMAModel(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    batch = synthetic_batch(batch_size, config.horizon)

    def step():
        loss = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(policy)

    return median_seconds(step, repeats)


def chunk_seconds(config: DiffusionPolicyConfig, repeats: int) -> float:
    policy = random_policy(config).eval()
    obs = {"image": torch.rand(1, config.n_obs_steps, 3, 96, 96),
           "agent_pos": torch.rand(1, config.n_obs_steps, 2) * 512}
    generator = torch.Generator().manual_seed(0)
    return median_seconds(lambda: policy.predict_action(obs, generator=generator), repeats)


def params(config: DiffusionPolicyConfig) -> tuple[float, float]:
    policy = random_policy(config)
    count = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
    return count(policy.obs_encoder), count(policy.model)


def data_seconds(batch_size: int, repeats: int) -> float:
    from dpstack.datasets.pusht import PushTImageDataset

    dataset = PushTImageDataset(horizon=16, pad_before=1, pad_after=7, max_train_episodes=90)
    rng = np.random.default_rng(0)
    return median_seconds(lambda: dataset.batch(rng.integers(0, len(dataset), batch_size)), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per CPU-config number")
    parser.add_argument("--paper-repeats", type=int, default=2, help="timed calls per paper-config number")
    parser.add_argument("--sweep", action="store_true", help="also time candidate CPU sizes (train step only)")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--data", action="store_true", help="also time building one batch from the Push-T data")
    args = parser.parse_args()
    if min(args.repeats, args.paper_repeats) < 1:
        parser.error("--repeats and --paper-repeats must be at least 1 (use --skip-paper to leave out the paper rows)")

    rows = []
    if not args.skip_paper:
        paper = policy_config("train_diffusion_unet_hybrid_workspace")
        rows.append(("paper (resnet18 w64, unet 512/1024/2048), DDPM-100", paper, args.paper_repeats, True))
        rows.append(("paper network, DDIM-10", DiffusionPolicyConfig.from_dict(
            paper.to_dict() | {"sampler": "ddim", "num_inference_steps": 10}), args.paper_repeats, False))
    cpu = policy_config("pusht_image_cpu")
    rows.append((f"pusht_image_cpu (enc w{cpu.image_encoder['width']}, unet "
                 f"{'/'.join(map(str, cpu.down_dims))}), {cpu.sampler.upper()}-{cpu.num_inference_steps}",
                 cpu, args.repeats, True))
    sweep = [(label, policy_config("pusht_image_cpu", o)) for label, o in SWEEP] if args.sweep else []

    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nthreads={threads}  batch={args.batch_size}")
        print(f"{'config':<62} {'enc M':>6} {'unet M':>7} {'train step s':>13} {'chunk ms':>9}")
        for label, config, repeats, do_train in rows:
            encoder, unet = params(config)
            train = f"{train_step_seconds(config, args.batch_size, repeats):.3f}" if do_train else "-"
            chunk = chunk_seconds(config, repeats) * 1000
            print(f"{label:<62} {encoder:>6.2f} {unet:>7.2f} {train:>13} {chunk:>9.1f}", flush=True)
        for label, config in sweep:
            encoder, unet = params(config)
            train = train_step_seconds(config, args.batch_size, args.repeats)
            print(f"sweep: {label:<55} {encoder:>6.2f} {unet:>7.2f} {train:>13.3f} {'-':>9}", flush=True)
        if args.data:
            seconds = data_seconds(args.batch_size, args.repeats)
            print(f"data: PushTImageDataset.batch({args.batch_size}) {seconds:.3f} s")


if __name__ == "__main__":
    main()
