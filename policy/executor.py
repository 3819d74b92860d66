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
    ``predict(stacked_obs) -> (B, n_action_steps, action_dim)`` every n_action_steps steps. A predictor
    with ``accepts_episode_keys = True`` (``torch_predictor``) is called ``predict(stacked_obs, keys)``
    after ``reset(obs, episode_keys)``, one key per row, ``(episode_key, chunk_index)``, so it can draw
    each episode's noise on its own.
    """

    def __init__(self, predict: Callable[..., np.ndarray], n_obs_steps: int, n_action_steps: int) -> None:
        self.predict = predict
        self.n_action_steps = n_action_steps
        self.history = ObservationHistory(n_obs_steps)
        self.queue: deque[np.ndarray] = deque()
        self.chunks_predicted = 0
        self.episode_keys: list | None = None

    def reset(self, first_obs: dict[str, np.ndarray], episode_keys: list | None = None) -> None:
        self.history.reset(first_obs)
        self.queue.clear()
        self.chunks_predicted = 0
        self.episode_keys = None if episode_keys is None else list(episode_keys)

    def select(self, rows: list[int]) -> None:
        """Continue with the episodes at ``rows`` only (the others ended)."""
        self.history.select(rows)
        self.queue = deque(actions[rows] for actions in self.queue)
        if self.episode_keys is not None:
            self.episode_keys = [self.episode_keys[r] for r in rows]

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Append ``obs`` (None right after ``reset``) and return the next actions, replanning if needed."""
        if obs is not None:
            self.history.append(obs)
        if not self.queue:
            stacked = self.history.stacked()
            if self.episode_keys is None or not getattr(self.predict, "accepts_episode_keys", False):
                chunk = np.asarray(self.predict(stacked))
            else:
                chunk = np.asarray(self.predict(stacked, [(key, self.chunks_predicted) for key in self.episode_keys]))
            self.chunks_predicted += 1
            self.queue.extend(chunk[:, i] for i in range(min(self.n_action_steps, chunk.shape[1])))
        return self.queue.popleft()


def _flatten(key) -> list[int]:
    return [v for item in key for v in _flatten(item)] if isinstance(key, (tuple, list)) else [int(key)]


def key_seed(seed: int, key) -> int:
    """A 63-bit generator seed from ``seed`` and a (nested) tuple of ints, stable across runs."""
    entropy = [v % 2**64 for v in (int(seed), *_flatten(key))]  # SeedSequence takes non-negative ints
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return int(state[0] ^ (state[1] >> np.uint64(1))) & (2**63 - 1)


def torch_predictor(policy, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                    episode_seed: int | None = None):
    """Adapt ``policy.predict_action`` (torch, batched dict) to the executor's NumPy interface.

    With ``episode_seed``, rows that come with keys draw their noise from generators seeded by
    ``key_seed(episode_seed, key)``: an episode's actions then do not depend on which episodes share
    its batch (the evaluation's n_envs), and a re-run episode repeats exactly."""

    def predict(stacked_obs: dict[str, np.ndarray], keys: list | None = None) -> np.ndarray:
        obs = {key: torch.as_tensor(value, dtype=torch.float32, device=device) for key, value in stacked_obs.items()}
        noise = generator
        if episode_seed is not None:
            if keys is None:
                raise ValueError("torch_predictor(episode_seed=...) needs episode keys: "
                                 "reset the executor with episode_keys (PushTRunner does)")
            noise = [torch.Generator(device=device).manual_seed(key_seed(episode_seed, key)) for key in keys]
        return policy.predict_action(obs, generator=noise)["action"].cpu().numpy()

    predict.accepts_episode_keys = True
    return predict
