"""Episodes a policy plays in the simulator, recorded as demonstrations (self-imitation data).

``collect_rollouts`` runs a keypoint policy on seeded Push-T episodes (the evaluation's protocol: legacy
resets, 300 steps, receding-horizon chunks, per-episode sampling noise) and records, step by step, the
state s_t = [agent x, y, block x, y, θ] seen before each action and the action a_t commanded there: the
layout of the official store (``state``, ``action``, ``keypoint``). ``write_rollouts`` keeps the
successful ones (coverage > 0.95, reached on the last recorded step, since success ends an episode) in a
replay-buffer store that ``PushTLowdimDataset(extra_stores=[...])`` trains on beside the demonstrations.

Usage: python -m dpstack.datasets.rollouts CKPT OUT.zarr --start-seed 3000000 --n-episodes 500
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from dpstack.datasets.replay_buffer import ReplayBuffer

ROLLOUT_KEY = 2  # episode-key split for data collection (the evaluation uses 0 = train, 1 = test)
RESERVED_SEEDS = range(100000, 100500)  # the test seeds the project reports on: never trained on


@dataclass
class Rollout:
    seed: int
    states: np.ndarray    # (T, 5) float64, the state before each action
    actions: np.ndarray   # (T, 2) float64, commanded agent targets
    max_coverage: float
    success: bool


def collect_rollouts(policy, seeds: list[int], sampling_seed: int = 42, max_steps: int = 300,
                     batch_size: int = 100, progress: bool = True) -> list[Rollout]:
    """Play ``policy`` (keypoint observations) on the Push-T episodes ``seeds``, ``batch_size`` in lockstep."""
    from dpstack.envs import PushTEnv
    from dpstack.envs.geometry import SUCCESS_COVERAGE
    from dpstack.evaluation.vector_env import stack_observations
    from dpstack.policy.executor import RecedingHorizonExecutor, torch_predictor

    if policy.config.obs_type != "lowdim":
        raise ValueError(f"rollouts are recorded for keypoint policies; this one observes {policy.config.obs_type}")
    rollouts = []
    bar = tqdm(total=len(seeds), desc="rollouts", disable=not progress, leave=False)
    for start in range(0, len(seeds), batch_size):
        wave = seeds[start:start + batch_size]
        envs = [PushTEnv(obs_type="keypoints", legacy=True) for _ in wave]
        observations = [env.reset(seed=seed)[0] for env, seed in zip(envs, wave)]
        executor = RecedingHorizonExecutor(torch_predictor(policy, episode_seed=sampling_seed),
                                           policy.config.n_obs_steps, policy.config.n_action_steps)
        executor.reset(stack_observations(observations), episode_keys=[(ROLLOUT_KEY, seed) for seed in wave])
        states = [[] for _ in wave]
        actions = [[] for _ in wave]
        coverage = np.zeros(len(wave))
        active = list(range(len(wave)))
        for step in range(max_steps):
            chosen = executor.act(None if step == 0 else stack_observations([observations[i] for i in active]))
            still_running = []
            for row, i in enumerate(active):
                states[i].append(envs[i].physics.state.copy())
                actions[i].append(np.asarray(chosen[row], dtype=np.float64))
                observations[i], _, terminated, _, info = envs[i].step(chosen[row])
                coverage[i] = max(coverage[i], info["coverage"])
                if not terminated:
                    still_running.append(i)
            if len(still_running) != len(active):
                executor.select([row for row, i in enumerate(active) if i in still_running])
                active = still_running
            if not active:
                break
        rollouts += [Rollout(seed, np.array(states[i]), np.array(actions[i]), float(coverage[i]),
                             bool(coverage[i] > SUCCESS_COVERAGE)) for i, seed in enumerate(wave)]
        bar.update(len(wave))
    bar.close()
    return rollouts


def write_rollouts(rollouts: list[Rollout], path: str | os.PathLike, attributes: dict | None = None) -> int:
    """Write the successful rollouts to a replay-buffer store at ``path`` (atomically: built beside it, then
    renamed); the store's attributes record ``attributes`` and every collected seed. Returns the count kept."""
    from dpstack.envs.geometry import block_keypoints_batch

    kept = [r for r in rollouts if r.success]
    if not kept:
        raise ValueError(f"none of the {len(rollouts)} rollouts succeeded: nothing to write to {path}")
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    buffer = ReplayBuffer.create(partial)
    for rollout in kept:
        buffer.add_episode({"state": rollout.states.astype(np.float32),
                            "action": rollout.actions.astype(np.float32),
                            "keypoint": block_keypoints_batch(rollout.states[:, 2:5]).astype(np.float32)})
    zarr.open_group(partial, mode="a").attrs.update({
        **(attributes or {}), "seeds": [r.seed for r in rollouts],
        "kept_seeds": [r.seed for r in kept], "success_rate": len(kept) / len(rollouts)})
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    return len(kept)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a keypoint policy checkpoint (training or exported)")
    parser.add_argument("output", type=Path, help="the replay-buffer store to write (a .zarr folder)")
    parser.add_argument("--start-seed", type=int, default=3_000_000)
    parser.add_argument("--n-episodes", type=int, default=500)
    parser.add_argument("--sampling-seed", type=int, default=42, help="seeds the per-episode sampling noise")
    parser.add_argument("--batch-size", type=int, default=100, help="episodes stepped in lockstep")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    seeds = list(range(args.start_seed, args.start_seed + args.n_episodes))
    if set(seeds) & set(RESERVED_SEEDS):
        raise SystemExit(f"seeds {args.start_seed}..{seeds[-1]} overlap the test seeds 100000-100499, which "
                         "must never be trained on: choose --start-seed elsewhere (e.g. 3000000)")
    from dpstack.policy.checkpoint import load_policy

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    policy.optimize_for_inference()
    started = time.monotonic()
    rollouts = collect_rollouts(policy, seeds, args.sampling_seed, batch_size=args.batch_size)
    settings = {"checkpoint": str(args.checkpoint), "sampling_seed": args.sampling_seed,
                "sampler": policy.config.sampler, "num_inference_steps": policy.config.num_inference_steps,
                "n_action_steps": policy.config.n_action_steps}
    kept = write_rollouts(rollouts, args.output, settings)
    steps = sum(len(r.states) for r in rollouts if r.success)
    print(json.dumps({"output": str(args.output), "episodes": len(rollouts), "successful_kept": kept,
                      "steps_kept": steps, "seconds": round(time.monotonic() - started, 1)}))
    return args.output


if __name__ == "__main__":
    main()
