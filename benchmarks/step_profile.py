"""Where the time goes: a training step (data, forward, backward, optimizer, EMA) and an inference chunk
(observation encoding, denoiser calls, scheduler steps, unnormalising), phase by phase.

    python benchmarks/step_profile.py train [--config pusht_lowdim_cpu] [--steps 40] [--repeats 3] [--threads 1]
    python benchmarks/step_profile.py infer [--checkpoint pretrained/pusht_lowdim.ckpt] [--batch 1] [--chunks 40]

``train`` builds the config's data, model, AdamW and EMA exactly as ``train.py`` does (same recipe) and times
each phase of real steps on real batches with ``time.perf_counter`` (every phase runs to completion on
the CPU before the clock reads, so nothing overlaps). ``infer`` replays the policy's ``predict_action``
with a clock between its parts (the traced network, as ``eval.py`` and the robot node run it). A row is the
median over repeats of the per-phase median.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def clocked(times: dict, name: str, started: float) -> float:
    now = time.perf_counter()
    times.setdefault(name, []).append(now - started)
    return now


def profile_training(config_name: str, steps: int, fused: bool, overrides: list[str]) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from dpstack.datasets.loader import make_dataloader
    from dpstack.diffusion.ema import EMAModel
    from dpstack.training.recipes import make_recipe

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose(config_name, overrides=overrides)
    torch.manual_seed(0)
    recipe = make_recipe(cfg)
    dataset, _ = recipe.build_data()
    model = recipe.build_model(dataset)
    ema = EMAModel(model, **cfg.ema)
    tc = cfg.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps,
                                  weight_decay=tc.weight_decay, fused=fused or None)
    loader = iter(make_dataloader(dataset, tc.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)))
    times: dict[str, list[float]] = {}
    for step in range(steps + 3):
        if step == 3:
            times.clear()  # warm-up steps
        started = time.perf_counter()
        batch = next(loader)
        started = clocked(times, "data (gather + finalize)", started)
        loss = model.compute_loss(batch)
        started = clocked(times, "forward (compute_loss)", started)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        started = clocked(times, "backward", started)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.get("grad_clip_norm") or float("inf"))
        optimizer.step()
        started = clocked(times, "optimizer (clip + AdamW)", started)
        ema.step(model)
        clocked(times, "EMA update", started)
    return {name: statistics.median(values) for name, values in times.items()}


def profile_inference(checkpoint: Path, batch: int, chunks: int) -> dict[str, float]:
    from dpstack.policy.checkpoint import load_policy

    policy = load_policy(checkpoint).optimize_for_inference()
    config = policy.config
    if config.obs_type != "lowdim":
        raise SystemExit("infer profiles low-dim checkpoints (observations are drawn at random)")
    obs = {"obs": torch.randn(batch, config.n_obs_steps, config.obs_dim)}
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for chunk in range(chunks + 3):
            if chunk == 3:
                times.clear()
            started = time.perf_counter()
            cond = policy._global_condition(obs)
            started = clocked(times, "observation (normalise + encode)", started)
            sample = torch.randn(batch, config.horizon, config.action_dim)
            network = scheduler = 0.0
            for t in policy.inference_scheduler.timesteps:
                tick = time.perf_counter()
                output = policy.model(sample, t, cond)
                tock = time.perf_counter()
                sample = policy.inference_scheduler.step(output, t, sample).prev_sample
                network, scheduler = network + tock - tick, scheduler + time.perf_counter() - tock
            times.setdefault(f"denoiser ({len(policy.inference_scheduler.timesteps)} calls)", []).append(network)
            times.setdefault("scheduler steps", []).append(scheduler)
            started = time.perf_counter()
            policy.normalizer["action"].unnormalize(sample)
            clocked(times, "unnormalise", started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(rows: list[dict[str, float]], header: str) -> None:
    names = list(rows[0])
    medians = {name: statistics.median(row[name] for row in rows) for name in names}
    total = sum(medians.values())
    print(f"\n| {header} | median ms | share |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {1000 * medians[name]:.2f} | {100 * medians[name] / total:.0f} % |")
    print(f"| total | {1000 * total:.2f} | 100 % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "infer"])
    parser.add_argument("--config", default="pusht_lowdim_cpu")
    parser.add_argument("--override", nargs="*", default=[], help="hydra overrides of the config")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) instead of the foreach one")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "pretrained" / "pusht_lowdim.ckpt")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    if args.what == "train":
        rows = [profile_training(args.config, args.steps, args.fused_adamw, args.override) for _ in range(args.repeats)]
        report(rows, f"{args.config} training step ({args.steps} steps × {args.repeats})")
    else:
        rows = [profile_inference(args.checkpoint, args.batch, args.chunks) for _ in range(args.repeats)]
        report(rows, f"{args.checkpoint.name} chunk, batch {args.batch} ({args.chunks} chunks × {args.repeats})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
