"""Replay recorded Push-T demonstrations in the simulator and write a video of each.

    python -m dpstack.envs.replay [--episodes 0 1 2] [--output-dir outputs/replay] [--zarr PATH]

Each episode starts from its recorded first state and executes the recorded actions open loop;
the video shows the commanded action as a red cross. Printed per episode: steps, final and max
goal coverage, and the block's drift from the recording (open-loop drift grows with time; the
teacher-forced, step-by-step replay is exact to float32 precision, see tests/test_env_fidelity.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dpstack.envs.pusht_env import PushTEnv
from dpstack.envs.video import write_video


def replay_episode(episode: dict[str, np.ndarray], video_path: Path | None = None) -> dict[str, float]:
    """Run one recorded episode open loop; return coverage and drift statistics."""
    env = PushTEnv(obs_type="state", render_mode="rgb_array")
    obs, info = env.reset(options={"reset_to_state": episode["state"][0]})
    frames, coverages, drift = [env.render()], [info["coverage"]], []
    for t, action in enumerate(episode["action"]):
        obs, _, _, _, info = env.step(action)
        frames.append(env.render())
        coverages.append(info["coverage"])
        if t + 1 < len(episode["state"]):
            drift.append(float(np.linalg.norm(obs[2:4] - episode["state"][t + 1, 2:4])))
    if video_path is not None:
        write_video(video_path, frames, fps=env.metadata["render_fps"])
    return {
        "steps": len(episode["action"]),
        "final_coverage": coverages[-1],
        "max_coverage": max(coverages),
        "median_block_drift_px": float(np.median(drift)) if drift else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    from dpstack.datasets.paths import pusht_zarr_path
    from dpstack.datasets.replay_buffer import ReplayBuffer

    parser = argparse.ArgumentParser(description="Replay Push-T demonstrations in the simulator.")
    parser.add_argument("--episodes", type=int, nargs="+", default=[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/replay"))
    parser.add_argument("--zarr", type=Path, default=None, help="replay buffer (default: the data setting)")
    args = parser.parse_args(argv)
    zarr_path = args.zarr or pusht_zarr_path()
    buffer = ReplayBuffer.open(zarr_path, keys=["state", "action"])
    for index in args.episodes:
        if not 0 <= index < buffer.n_episodes:
            raise SystemExit(f"episode {index} does not exist: {zarr_path} has {buffer.n_episodes} episodes")
        video = args.output_dir / f"episode_{index:03d}.mp4"
        stats = replay_episode(buffer.get_episode(index), video)
        print(f"episode {index}: {stats['steps']} steps, final coverage {stats['final_coverage']:.3f}, "
              f"max {stats['max_coverage']:.3f}, median drift {stats['median_block_drift_px']:.3f} px -> {video}")


if __name__ == "__main__":
    main()
