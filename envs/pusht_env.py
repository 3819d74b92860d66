"""The Push-T task as a gymnasium environment (``PushT-v0``).

Push the T block onto the goal pose (256, 256, π/4) with a circular agent that tracks an
absolute target position. Reward ``clip(coverage / 0.95, 0, 1)`` with
``coverage = area(goal ∩ block) / area(goal)``; the episode terminates when coverage > 0.95.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dpstack.envs.geometry import (
    GOAL_POSE,
    SUCCESS_COVERAGE,
    WORKSPACE_SIZE,
    block_keypoints,
    goal_coverage,
    reward_from_coverage,
)
from dpstack.envs.physics import CONTROL_HZ, PushTPhysics

OBS_TYPES = ("state", "keypoints", "image")
UNSEEDED_SEED_RANGE = 2**31 - 1


def initial_state_for_seed(seed: int) -> np.ndarray:
    """The reference's initial state for ``seed``: NumPy ``RandomState(seed)`` draws agent
    ``randint(50, 450)`` ×2, block ``randint(100, 400)`` ×2 and angle ``randn()·2π − π``."""
    rs = np.random.RandomState(seed=seed)
    return np.array([
        rs.randint(50, 450), rs.randint(50, 450),
        rs.randint(100, 400), rs.randint(100, 400),
        rs.randn() * 2 * np.pi - np.pi,
    ], dtype=np.float64)


class PushTEnv(gym.Env):
    """Push-T with ``state`` (5,), ``keypoints`` (20,) or ``image`` dict observations.

    ``legacy=True`` (the paper's evaluation mode) sets the block position before its angle on a
    seeded reset, reproducing the reference's initial states; ``legacy=False`` sets the angle
    first. ``reset(options={"reset_to_state": s})`` places agent and block exactly at ``s`` with the agent
    at rest; add ``"agent_velocity": v`` (``info["vel_agent"]`` of a recording, or
    ``agent_velocity_after_step`` of its previous step) to resume a recorded episode mid-way exactly.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        obs_type: str = "state",
        legacy: bool = True,
        render_mode: str | None = None,
        obs_image_size: int = 96,
        video_size: int = 256,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'human' or 'rgb_array', got {render_mode!r}")
        self.obs_type = obs_type
        self.legacy = legacy
        self.render_mode = render_mode
        self.obs_image_size = obs_image_size
        self.video_size = video_size
        size = float(WORKSPACE_SIZE)
        self.action_space = spaces.Box(0.0, size, shape=(2,), dtype=np.float64)
        if obs_type == "state":
            self.observation_space = spaces.Box(
                np.zeros(5), np.array([size, size, size, size, 2 * np.pi]), dtype=np.float64)
        elif obs_type == "keypoints":
            self.observation_space = spaces.Box(0.0, size, shape=(20,), dtype=np.float64)
        else:
            self.observation_space = spaces.Dict({
                "image": spaces.Box(0.0, 1.0, shape=(3, obs_image_size, obs_image_size), dtype=np.float32),
                "agent_pos": spaces.Box(0.0, size, shape=(2,), dtype=np.float32),
            })
        self.physics: PushTPhysics | None = None
        self.latest_action: np.ndarray | None = None
        self._renderer = None
        self._window = None
        self._clock = None

    # --- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self.physics = PushTPhysics(record_contact_points=self.obs_type == "image" or self.render_mode is not None)
        self.latest_action = None
        if options.get("reset_to_state") is not None:
            state = np.asarray(options["reset_to_state"], dtype=np.float64)
            if state.shape != (5,) or not np.all(np.isfinite(state)):
                raise ValueError(
                    f"reset_to_state must be 5 finite numbers [agent_x, agent_y, block_x, block_y, angle], got {state!r}")
            reset_seed = None
            velocity = options.get("agent_velocity")
            if velocity is not None:
                velocity = np.asarray(velocity, dtype=np.float64)
                if velocity.shape != (2,) or not np.all(np.isfinite(velocity)):
                    raise ValueError(f"agent_velocity must be 2 finite numbers [vx, vy] in px/s, got {velocity!r}")
            self.physics.set_state(state, position_before_angle=False, agent_velocity=velocity)
        else:
            reset_seed = seed if seed is not None else int(self.np_random.integers(UNSEEDED_SEED_RANGE))
            self.physics.set_state(initial_state_for_seed(reset_seed), position_before_angle=self.legacy)
        info = self._info(n_contacts=0)
        info["reset_seed"] = reset_seed
        if self.render_mode == "human":
            self.render()
        return self._observation(), info

    def step(self, action):
        if self.physics is None:
            raise RuntimeError("call reset() before step()")
        n_contacts = 0
        if action is not None:  # None advances nothing, as in the reference (teleop idle)
            target = self._validate_action(action)
            self.latest_action = target
            n_contacts = self.physics.step(target)
        info = self._info(n_contacts)
        terminated = info["coverage"] > SUCCESS_COVERAGE
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward_from_coverage(info["coverage"]), terminated, False, info

    def place(self, state) -> None:
        """Teleport agent and block to ``state`` = [agent_x, agent_y, block_x, block_y, angle]
        without resetting velocities or contact history (no physics step). Stepping a recorded
        action after placing the recorded state replays a demonstration step by step."""
        if self.physics is None:
            raise RuntimeError("call reset() before place()")
        self.physics.place(np.asarray(state, dtype=np.float64))

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' or 'human'.")
            return None
        renderer = self._draw()
        if self.render_mode == "rgb_array":
            return renderer.video_frame(self.latest_action)
        self._show(renderer)
        return None

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None

    # --- internals -----------------------------------------------------------------------
    @staticmethod
    def _validate_action(action) -> np.ndarray:
        try:
            target = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"action must be 2 numbers (target x, y in pixels), got {action!r}") from error
        if target.shape != (2,):
            raise ValueError(f"action must have shape (2,) (target x, y in pixels), got shape {target.shape}: {action!r}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"action must be finite, got {action!r}")
        return np.clip(target, 0.0, WORKSPACE_SIZE)

    def _info(self, n_contacts: int) -> dict[str, Any]:
        physics = self.physics
        block_pose = physics.block_pose
        coverage = goal_coverage(block_pose)
        return {
            "coverage": coverage,
            "is_success": coverage > SUCCESS_COVERAGE,
            "n_contacts": n_contacts,
            "pos_agent": physics.agent_position,
            "vel_agent": physics.agent_velocity,
            "block_pose": block_pose,
            "goal_pose": GOAL_POSE.copy(),
        }

    def _observation(self):
        physics = self.physics
        if self.obs_type == "state":
            return physics.state
        if self.obs_type == "keypoints":
            return np.concatenate([block_keypoints(physics.block_pose).reshape(-1), physics.agent_position])
        image = self._draw().observation_image()
        return {
            "image": image.astype(np.float32) / np.float32(255.0),
            "agent_pos": physics.agent_position.astype(np.float32),
        }

    def _draw(self):
        if self._renderer is None:
            from dpstack.envs.render import PushTRenderer

            self._renderer = PushTRenderer(self.obs_image_size, self.video_size)
        physics = self.physics
        if physics is None:
            raise RuntimeError("call reset() before rendering")
        self._renderer.draw(physics.agent_position, physics.block_pose, physics.latest_contacts)
        return self._renderer

    def _show(self, renderer) -> None:
        import pygame

        from dpstack.envs.render import ACTION_MARKER_COLOR

        if self._window is None:
            pygame.display.init()
            pygame.display.set_caption("Push-T")
            self._window = pygame.display.set_mode((WORKSPACE_SIZE, WORKSPACE_SIZE))
            self._clock = pygame.time.Clock()
        self._window.blit(renderer.canvas, (0, 0))
        if self.latest_action is not None:
            x, y = (int(v) for v in self.latest_action)
            pygame.draw.line(self._window, ACTION_MARKER_COLOR, (x - 10, y), (x + 10, y), 2)
            pygame.draw.line(self._window, ACTION_MARKER_COLOR, (x, y - 10), (x, y + 10), 2)
        pygame.event.pump()
        pygame.display.update()
        self._clock.tick(self.metadata["render_fps"])
