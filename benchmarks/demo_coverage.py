"""How far the Push-T demonstrations push the block: goal coverage at the end of each recorded episode.

Usage: python benchmarks/demo_coverage.py [--zarr PATH]

Prints, over all episodes, the percentiles of (a) the coverage of the last recorded state, (b) the
maximum coverage over the recorded states and (c) the coverage after also stepping the last recorded
action from the last recorded state (teacher-forced, as tests/test_env_fidelity.py replays), and the
share of episodes above the 0.95 success threshold; then the share of all recorded states (frames) whose
coverage is above 0.80, 0.85 and 0.90, i.e. how much of the data shows the block nearly home.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


from dpstack.datasets.paths import pusht_zarr_path  # noqa: E402
from dpstack.datasets.replay_buffer import ReplayBuffer  # noqa: E402
from dpstack.envs import PushTEnv  # noqa: E402
from dpstack.envs.geometry import SUCCESS_COVERAGE, goal_coverage  # noqa: E402


def last_action_coverage(env: PushTEnv, state: np.ndarray, action: np.ndarray) -> float:
    """Coverage after stepping the last recorded action from the last recorded state; the two steps before
    it are replayed the same way first, so the agent carries its recorded velocity into it."""
    env.reset(options={"reset_to_state": state[max(0, len(state) - 3)]})
    for t in range(max(0, len(state) - 3), len(state)):
        env.place(state[t])
        *_, info = env.step(action[t])
    return info["coverage"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zarr", type=Path, default=None, help="replay buffer (default: the data setting)")
    args = parser.parse_args()
    buffer = ReplayBuffer.open(args.zarr or pusht_zarr_path(), keys=["state", "action"])
    env = PushTEnv(obs_type="state")
    final, best, stepped, every_frame = [], [], [], []
    for index in range(buffer.n_episodes):
        episode = buffer.get_episode(index)
        state = episode["state"].astype(np.float64)
        coverages = [goal_coverage(pose) for pose in state[:, 2:5]]
        every_frame.extend(coverages)
        final.append(coverages[-1])
        best.append(max(coverages))
        stepped.append(last_action_coverage(env, state, episode["action"]))
    print(f"{buffer.n_episodes} episodes; percentiles 10/50/90 and share above {SUCCESS_COVERAGE}:")
    for name, values in (("last recorded state", final), ("max over recorded states", best),
                         ("after the last recorded action", stepped)):
        values = np.array(values)
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        print(f"  {name:32s} {p10:.3f} / {p50:.3f} / {p90:.3f}   {100 * (values > SUCCESS_COVERAGE).mean():.1f} %")
    every_frame = np.array(every_frame)
    shares = ", ".join(f"> {level:.2f}: {(every_frame > level).sum()} ({100 * (every_frame > level).mean():.2f} %)"
                       for level in (0.80, 0.85, 0.90))
    print(f"{len(every_frame)} recorded states; share with coverage {shares}")


if __name__ == "__main__":
    main()
