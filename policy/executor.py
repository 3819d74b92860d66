"""Receding-horizon execution: observe n_obs_steps, execute n_action_steps, replan.

Shared by the simulation runner and the robot node. Works on a batch of B parallel episodes:
the observation history repeats the first observation after a reset (as the reference's
multi-step wrapper does), and a new action chunk is requested when the queue runs dry.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import torch


class ObservationHistory:
    """The last ``n_steps`` observations of B episodes, stacked as (B, n_steps, ...) per key."""

    def __init__(self, n_steps: int) -> None:
        self.n_steps = n_steps
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=n_steps)

    def reset(self, first_obs: dict[str, np.ndarray]) -> None:
        """Start over: the history is ``n_steps`` copies of ``first_obs``."""
        self.frames.clear()
        for _ in range(self.n_steps):
            self.frames.append(first_obs)

    def append(self, obs: dict[str, np.ndarray]) -> None:
        if not self.frames:
            raise RuntimeError("call reset(first_obs) before append()")
        self.frames.append(obs)

    def select(self, rows: list[int]) -> None:
        """Keep only the episodes at ``rows`` of the batch."""
        self.frames = deque(({key: value[rows] for key, value in frame.items()} for frame in self.frames),
                            maxlen=self.n_steps)

    def stacked(self) -> dict[str, np.ndarray]:
        return {key: np.stack([frame[key] for frame in self.frames], axis=1) for key in self.frames[-1]}


class RecedingHorizonExecutor:
    """Turns a chunk-predicting policy into a per-step controller for B episodes in lockstep.

    ``act(obs)`` records the newest observation and returns (B, action_dim) actions, calling
    ``predict(stacked_obs) -> (B, n_action_steps, action_dim)`` every n_action_steps steps.
    """

    def __init__(self, predict: Callable[[dict[str, np.ndarray]], np.ndarray], n_obs_steps: int,
                 n_action_steps: int) -> None:
        self.predict = predict
        self.n_action_steps = n_action_steps
        self.history = ObservationHistory(n_obs_steps)
        self.queue: deque[np.ndarray] = deque()
        self.chunks_predicted = 0

    def reset(self, first_obs: dict[str, np.ndarray]) -> None:
        self.history.reset(first_obs)
        self.queue.clear()

    def select(self, rows: list[int]) -> None:
        """Continue with the episodes at ``rows`` only (the others ended)."""
        self.history.select(rows)
        self.queue = deque(actions[rows] for actions in self.queue)

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Append ``obs`` (None right after ``reset``) and return the next actions, replanning if needed."""
        if obs is not None:
            self.history.append(obs)
        if not self.queue:
            chunk = np.asarray(self.predict(self.history.stacked()))
            self.chunks_predicted += 1
            self.queue.extend(chunk[:, i] for i in range(min(self.n_action_steps, chunk.shape[1])))
        return self.queue.popleft()


def torch_predictor(policy, device: torch.device | str = "cpu", generator: torch.Generator | None = None):
    """Adapt ``policy.predict_action`` (torch, batched dict) to the executor's NumPy interface."""

    def predict(stacked_obs: dict[str, np.ndarray]) -> np.ndarray:
        obs = {key: torch.as_tensor(value, dtype=torch.float32, device=device) for key, value in stacked_obs.items()}
        return policy.predict_action(obs, generator=generator)["action"].cpu().numpy()

    return predict
