"""What a policy does once the block is nearly home: the evaluated episodes replayed step by step.

Usage: python benchmarks/near_miss.py --checkpoint CKPT --eval-log DIR/eval_log.json [--max-episodes N]

Re-runs the test episodes of an ``eval.py`` log with the same policy settings (sampler, inference steps,
actions per chunk, sampling seed), compares each with the logged maximum coverage, and prints, for
the failed episodes and for the successful ones, how many got above 0.90 coverage, how many of those then
lost 0.05 or more of it again before the episode ended (a push that overshoots), how far the worst such
loss went, and the share of the steps after first reaching 0.90 with a contact (in practice the agent
touching the block: near the goal the block is far from the walls).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from dpstack.envs import PushTEnv  # noqa: E402
from dpstack.envs.geometry import SUCCESS_COVERAGE  # noqa: E402
from dpstack.evaluation.vector_env import stack_observations  # noqa: E402
from dpstack.policy.checkpoint import load_policy  # noqa: E402
from dpstack.policy.executor import RecedingHorizonExecutor, torch_predictor  # noqa: E402

NEAR = 0.90
OVERSHOOT = 0.05


def replay(policy, seeds: list[int], sampling_seed: int, runner: dict) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and contact count per step, (episodes, max_steps), for the test episodes of an evaluation with
    the log's ``runner`` settings; a finished episode repeats its last coverage. Contacts are the env's
    ``n_contacts`` (agent–block and block–wall contact points)."""
    max_steps = runner["max_steps"]
    envs = [PushTEnv(obs_type=runner["obs_type"], legacy=runner["legacy"]) for _ in seeds]
    observations = [env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)]
    executor = RecedingHorizonExecutor(torch_predictor(policy, episode_seed=sampling_seed),
                                       policy.config.n_obs_steps, policy.config.n_action_steps)
    executor.reset(stack_observations(observations), episode_keys=[(1, seed) for seed in seeds])
    coverage = np.zeros((len(seeds), max_steps))
    contacts = np.zeros((len(seeds), max_steps))
    active = list(range(len(seeds)))
    for step in range(max_steps):
        actions = executor.act(None if step == 0 else stack_observations([observations[i] for i in active]))
        still_running = []
        for row, i in enumerate(active):
            observations[i], _, terminated, _, info = envs[i].step(actions[row])
            coverage[i, step], contacts[i, step] = info["coverage"], info["n_contacts"]
            if not terminated:
                still_running.append(i)
        for i in set(active) - set(still_running):
            coverage[i, step + 1:] = coverage[i, step]
        if len(still_running) != len(active):
            executor.select([row for row, i in enumerate(active) if i in still_running])
            active = still_running
        if not active:
            break
    return coverage, contacts


def summarize(name: str, coverage: np.ndarray, contacts: np.ndarray, steps: np.ndarray) -> None:
    """Overshoot after 0.90: max over t ≥ t₀.₉₀ of (max_{s≤t} c_s − c_t) ≥ 0.05."""
    losses, touching = [], []
    for c, n, length in zip(coverage, contacts, steps):
        c, n = c[:length], n[:length]
        if not (c > NEAR).any():
            continue
        after = slice(int(np.argmax(c > NEAR)), length)
        losses.append(float((np.maximum.accumulate(c[after]) - c[after]).max()))
        touching.append(float((n[after] > 0).mean()))
    if not losses:
        print(f"{name}: {len(coverage)} episodes, none reached {NEAR:.2f} coverage")
        return
    losses = np.array(losses)
    overshot = losses >= OVERSHOOT
    print(f"{name}: {len(coverage)} episodes, {len(losses)} reached {NEAR:.2f} coverage; of those "
          f"{overshot.sum()} ({100 * overshot.mean():.0f} %) then lost ≥ {OVERSHOOT} of it, "
          f"worst loss median {np.median(losses):.3f} (90th percentile {np.percentile(losses, 90):.3f}); "
          f"a contact (agent–block or block–wall) in {100 * np.mean(touching):.0f} % of the steps after reaching "
          f"{NEAR:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--eval-log", required=True, type=Path, help="eval_log.json written by eval.py")
    parser.add_argument("--seed", type=int, default=42,
                        help="the --seed the evaluation ran with (sampling noise; eval.py's default is 42)")
    parser.add_argument("--max-episodes", type=int, default=None, help="the first N test episodes only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log = json.loads(args.eval_log.read_text())
    episodes = [e for e in log["episodes"] if e["split"] == "test"][:args.max_episodes]
    policy = load_policy(args.checkpoint)
    policy.reconfigure(sampler=log["sampler"], num_inference_steps=log["num_inference_steps"],
                       n_action_steps=log["n_action_steps"])
    policy.optimize_for_inference()
    coverage, contacts = replay(policy, [e["seed"] for e in episodes], args.seed, log["runner"])
    success = np.array([e["success"] for e in episodes])
    replayed_success = coverage.max(1) > SUCCESS_COVERAGE
    difference = np.abs(coverage.max(1) - np.array([e["max_coverage"] for e in episodes]))
    print(f"replayed {len(episodes)} episodes (batch sizes differ from the evaluation's, so floating-point "
          f"rounding differs): max coverage within {difference.max():.4f} of the log's (median "
          f"{np.median(difference):.1e}); {(replayed_success != success).sum()} changed success")
    success = replayed_success
    steps = np.array([int(np.argmax(c > SUCCESS_COVERAGE)) + 1 if s else len(c) for c, s in zip(coverage, success)])
    for name, rows in (("failed", ~success), ("successful", success)):
        summarize(name, coverage[rows], contacts[rows], steps[rows])


if __name__ == "__main__":
    main()
