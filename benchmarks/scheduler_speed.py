"""Time a full DDPM sampling loop (set_timesteps + every step) with a trivial model: ours vs diffusers.

Usage: python benchmarks/scheduler_speed.py [--repeats 50]
Sample shape (1, 16, 2) as in Diffusion Policy's Push-T action chunks; DP's scheduler configuration.
"""
import argparse
import platform
import statistics
import time

import torch

from dpstack import diffusion

CONFIG = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
              clip_sample=True, prediction_type="epsilon")


def sampling_loop_seconds(scheduler, num_inference_steps: int, repeats: int) -> float:
    """Median wall time of one policy-style sampling loop."""
    model = lambda sample, t: sample * 0.1  # noqa: E731  trivial model: the scheduler dominates
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats + 2):  # two warm-up runs are discarded
        sample = torch.randn((1, 16, 2), generator=generator)
        start = time.perf_counter()
        scheduler.set_timesteps(num_inference_steps)
        for t in scheduler.timesteps:
            sample = scheduler.step(model(sample, t), t, sample, generator=generator).prev_sample
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main():
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} runs, sample (1, 16, 2)")
    print(f"{'steps':>5} | {'ours (ms)':>9} | {'diffusers (ms)':>14} | {'speed-up':>8}")
    for steps in (100, 10):
        ours = sampling_loop_seconds(diffusion.DDPMScheduler(**CONFIG), steps, args.repeats)
        theirs = sampling_loop_seconds(diffusers.DDPMScheduler(**CONFIG), steps, args.repeats)
        print(f"{steps:>5} | {ours * 1e3:>9.3f} | {theirs * 1e3:>14.3f} | {theirs / ours:>7.1f}x")


if __name__ == "__main__":
    main()
