"""Record Push-T demonstrations by hand: ``python -m dpstack.envs.teleop --output demos.zarr``.

Move the mouse onto the blue agent to take control; it then follows the mouse at 10 Hz.
Keys: ``S``/``Enter`` save the episode and start the next, ``R`` discard it and restart,
``Space`` pause/resume, ``Q``/``Esc`` quit (an unsaved episode is discarded). An episode is
saved automatically when the block reaches the goal. Episode ``i`` of a new store starts
from seed ``i`` (as the original demonstrations do); episodes are appended in the dataset's
zarr layout ``data/{img,state,keypoint,action,n_contacts}``, ``meta/episode_ends``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpstack.envs.geometry import block_keypoints
from dpstack.envs.pusht_env import PushTEnv

ENGAGE_DISTANCE = 30.0  # the mouse takes over the agent once this close to it (pixels)


@dataclass
class EpisodeRecorder:
    """Per-step records: the observation the action was taken from, then the action."""

    steps: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, obs: dict, info: dict, action: np.ndarray) -> None:
        """Record one step; the image is stored (H, W, 3) on the 0..255 scale like the dataset's."""
        self.steps.append({
            "img": np.rint(obs["image"].transpose(1, 2, 0) * 255.0).astype(np.float32),
            "state": np.concatenate([info["pos_agent"], info["block_pose"]]).astype(np.float32),
            "keypoint": block_keypoints(info["block_pose"]).astype(np.float32),
            "action": np.asarray(action, dtype=np.float32),
            "n_contacts": np.array([info["n_contacts"]], dtype=np.float32),
        })

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.stack([step[key] for step in self.steps]) for key in self.steps[0]}


class TeleopSession:
    """The teleoperation loop, driven by pygame events so it runs headless in tests."""

    def __init__(self, output: Path, start_seed: int | None = None, fps: int = 10) -> None:
        from dpstack.datasets.replay_buffer import ReplayBuffer

        self.buffer = ReplayBuffer.open(output, mode="a") if Path(output).exists() else ReplayBuffer.create(output)
        self.next_seed = self.buffer.n_episodes if start_seed is None else start_seed
        self.env = PushTEnv(obs_type="image", render_mode="human")
        self.env.metadata = {**self.env.metadata, "render_fps": fps}  # the window's frame rate
        self.mouse = np.zeros(2)
        self.running = True
        self.paused = False
        self.saved_episodes = 0
        self._start_episode()

    def _start_episode(self) -> None:
        self.seed = self.next_seed
        self.obs, self.info = self.env.reset(seed=self.seed)
        self.recorder = EpisodeRecorder()
        self.engaged = False
        print(f"episode with seed {self.seed}: move the mouse onto the agent to start")

    def save_episode(self) -> None:
        if not self.recorder.steps:
            print("nothing recorded yet; episode not saved")
            return
        self.buffer.add_episode(self.recorder.arrays())
        self.saved_episodes += 1
        print(f"saved episode {self.buffer.n_episodes - 1} ({len(self.recorder.steps)} steps) to {self.buffer.path}")
        self.next_seed = self.seed + 1
        self._start_episode()

    def handle_event(self, event) -> None:
        import pygame

        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.MOUSEMOTION:
            self.mouse = np.asarray(event.pos, dtype=np.float64)
        elif event.type == pygame.KEYDOWN:
            if event.key in (pygame.K_q, pygame.K_ESCAPE):
                self.running = False
            elif event.key in (pygame.K_s, pygame.K_RETURN):
                self.save_episode()
            elif event.key == pygame.K_r:
                print("episode discarded")
                self._start_episode()
            elif event.key == pygame.K_SPACE:
                self.paused = not self.paused

    def tick(self) -> None:
        """One 10 Hz control step: act on the mouse if engaged, record, step, auto-save on success."""
        if self.paused:
            self.env.render()
            return
        if not self.engaged and np.linalg.norm(self.mouse - self.info["pos_agent"]) < ENGAGE_DISTANCE:
            self.engaged = True
        action = self.mouse.copy() if self.engaged else None
        if action is not None:
            self.recorder.add(self.obs, self.info, action)
        self.obs, _, terminated, _, self.info = self.env.step(action)
        if terminated:
            print("goal reached")
            self.save_episode()

    def run(self, max_ticks: int | None = None) -> int:
        """Poll events and tick until quit (or ``max_ticks``); return the number of saved episodes."""
        import pygame

        ticks = 0
        while self.running and (max_ticks is None or ticks < max_ticks):
            for event in pygame.event.get():
                self.handle_event(event)
            if self.running:
                self.tick()
            ticks += 1
        return self.saved_episodes

    def close(self) -> None:
        self.env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Record Push-T demonstrations with the mouse.")
    parser.add_argument("--output", required=True, type=Path, help="zarr store to create or append to")
    parser.add_argument("--start-seed", type=int, default=None, help="seed of the first episode (default: episode count)")
    parser.add_argument("--fps", type=int, default=10, help="control rate in Hz (10 matches the dataset)")
    args = parser.parse_args(argv)
    if os.environ.get("SDL_VIDEODRIVER") == "dummy":
        print("SDL_VIDEODRIVER=dummy: no window will be shown")
    print(__doc__)
    session = TeleopSession(args.output, args.start_seed, args.fps)
    try:
        saved = session.run()
    finally:
        session.close()
    print(f"{saved} episode(s) saved to {args.output}")


if __name__ == "__main__":
    main()
