"""Evaluation speed: episodes/min of ``eval.py``'s runner against ``n_envs`` and ``n_workers``, beside the
original runner's layout (every env in its own process, all episodes at once), same run.

    python benchmarks/eval_speed.py [--checkpoint pretrained/pusht_lowdim.ckpt] [--episodes 50] [--repeats 3]

Each setting evaluates the same test episodes (seeds 100000…, no videos, the checkpoint's sampler) with the
policy batched over all live envs (one call per replanning step); the settings are interleaved within each
repeat and the median wall time is reported. Scores are printed too: they must agree across settings
(per-episode noise), so only the speed differs.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dpstack.evaluation.runner import PushTRunner, RunnerConfig
from dpstack.policy.checkpoint import load_policy
from dpstack.policy.executor import torch_predictor

REPO = Path(__file__).resolve().parents[1]
# (n_envs, n_workers); None = a process per env. The last one is the original runner's layout.
SETTINGS = [(1, 0), (10, 0), (25, 0), (50, 0), (50, 1), (50, 2), (56, None)]
ORIGINAL = (56, None)


def evaluate(policy, episodes: int, n_envs: int, n_workers: int | None) -> tuple[float, float, float]:
    """(wall seconds, seconds inside the policy, test mean score)."""
    obs_type = "keypoints" if policy.config.obs_type == "lowdim" else "image"
    config = RunnerConfig(obs_type=obs_type, n_test=episodes, n_train=0, n_envs=n_envs, n_workers=n_workers,
                          n_test_videos=0, n_train_videos=0)
    runner = PushTRunner(config, policy.config.n_obs_steps, policy.config.n_action_steps)
    predict, in_policy = torch_predictor(policy, episode_seed=42), [0.0]

    def timed_predict(*args, **kwargs):
        started = time.perf_counter()
        actions = predict(*args, **kwargs)
        in_policy[0] += time.perf_counter() - started
        return actions

    timed_predict.accepts_episode_keys = True  # the runner then passes the episode keys (per-episode noise)

    started = time.perf_counter()
    result = runner.run(timed_predict, progress=False)
    return time.perf_counter() - started, in_policy[0], result.metrics()["test/mean_score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "pretrained" / "pusht_lowdim.ckpt")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--settings", default=None,
                        help="n_envs:n_workers pairs, e.g. 8:none,50:0,56:0 (none = a process per env; the last one "
                             "is the ratios' baseline); default: the table's seven, against the original layout")
    args = parser.parse_args()
    settings, baseline = SETTINGS, ORIGINAL
    if args.settings:
        settings = [(int(envs), None if workers == "none" else int(workers))
                    for envs, workers in (pair.split(":") for pair in args.settings.split(","))]
        baseline = settings[-1]
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    policy.optimize_for_inference()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.checkpoint.name}: {args.episodes} test episodes a setting, {args.repeats} repeats (interleaved)")
    times = {setting: [] for setting in settings}
    policy_share, scores = {setting: [] for setting in settings}, {}
    for _ in range(args.repeats):
        for setting in settings:
            seconds, in_policy, scores[setting] = evaluate(policy, args.episodes, *setting)
            times[setting].append(seconds)
            policy_share[setting].append(in_policy / seconds)
    original = statistics.median(times[baseline])
    print(f"\n| n_envs | n_workers | median s | episodes/min | × ({baseline[0]}, {baseline[1]}) | in the policy | mean score |")
    print("|---|---|---|---|---|---|---|")
    for setting in settings:
        median = statistics.median(times[setting])
        workers = "a process per env" if setting[1] is None else ("in-process" if setting[1] == 0 else setting[1])
        print(f"| {setting[0]} | {workers} | {median:.1f} | {60 * args.episodes / median:.0f} | "
              f"{original / median:.2f} | {100 * statistics.median(policy_share[setting]):.0f} % | "
              f"{scores[setting]:.4f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
