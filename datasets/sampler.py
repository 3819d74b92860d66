"""Fixed-length windows over episodes with edge padding, and the train/validation split."""
from __future__ import annotations

from typing import Mapping, Sequence

import numba
import numpy as np


@numba.njit(cache=True)
def build_window_index(episode_ends: np.ndarray, episode_mask: np.ndarray, horizon: int,
                       pad_before: int, pad_after: int) -> np.ndarray:
    """Rows ``(first_step, episode_start, episode_end)`` of every window, in global step indices.

    An episode of length L yields windows starting at offsets -pad_before .. L - horizon + pad_after
    (inclusive); ``first_step`` may lie before ``episode_start`` or the window may run past
    ``episode_end``, and those frames are filled by the episode's first/last frame.
    """
    n_windows = 0
    for episode in range(len(episode_ends)):
        if episode_mask[episode]:
            start = 0 if episode == 0 else episode_ends[episode - 1]
            n_windows += max(0, episode_ends[episode] - start - horizon + pad_before + pad_after + 1)
    windows = np.empty((n_windows, 3), dtype=np.int64)
    row = 0
    for episode in range(len(episode_ends)):
        if not episode_mask[episode]:
            continue
        start = 0 if episode == 0 else episode_ends[episode - 1]
        end = episode_ends[episode]
        for offset in range(-pad_before, end - start - horizon + pad_after + 1):
            windows[row, 0] = start + offset
            windows[row, 1] = start
            windows[row, 2] = end
            row += 1
    return windows


def validation_mask(n_episodes: int, val_ratio: float, seed: int) -> np.ndarray:
    """Boolean mask of validation episodes: ``round(n * val_ratio)`` (at least 1, at most n - 1) drawn at random."""
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def cap_episodes(mask: np.ndarray, max_episodes: int | None, seed: int) -> np.ndarray:
    """``mask`` reduced to ``max_episodes`` randomly drawn selected episodes (unchanged if it has no more)."""
    selected = np.nonzero(mask)[0]
    if max_episodes is None or len(selected) <= max_episodes:
        return mask.copy()
    kept = selected[np.random.default_rng(seed).choice(len(selected), size=int(max_episodes), replace=False)]
    capped = np.zeros_like(mask)
    capped[kept] = True
    return capped


def train_validation_masks(n_episodes: int, val_ratio: float, seed: int,
                           max_train_episodes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation episode masks; validation is everything not kept for training."""
    train = cap_episodes(~validation_mask(n_episodes, val_ratio, seed), max_train_episodes, seed)
    return train, ~train


class SequenceSampler:
    """Windows of ``horizon`` steps from the episodes selected by ``episode_mask``.

    ``arrays`` maps names to step-aligned arrays (numpy, or any array supporting slicing
    such as zarr). Frames outside an episode repeat its first or last frame. ``first_steps`` maps
    keys to k: those are gathered for the first k frames of each window only (observations that a
    policy conditions on k of, such as images: k = n_obs_steps saves gathering the rest).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], episode_ends: np.ndarray, horizon: int,
                 pad_before: int = 0, pad_after: int = 0, episode_mask: np.ndarray | None = None,
                 first_steps: Mapping[str, int] | None = None):
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        if episode_mask is None:
            episode_mask = np.ones(len(episode_ends), dtype=bool)
        if len(episode_mask) != len(episode_ends):
            raise ValueError(f"episode_mask has {len(episode_mask)} entries for {len(episode_ends)} episodes")
        if horizon < 1 or pad_before < 0 or pad_after < 0:
            raise ValueError("horizon must be >= 1 and paddings >= 0")
        self.arrays = dict(arrays)
        self.horizon = horizon
        self.first_steps = dict(first_steps or {})
        if not all(1 <= k <= horizon for k in self.first_steps.values()):
            raise ValueError(f"first_steps must lie in [1, horizon={horizon}], got {self.first_steps}")
        self.windows = build_window_index(episode_ends, np.asarray(episode_mask, dtype=np.bool_),
                                          horizon, pad_before, pad_after)
        self._offsets = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def step_indices(self, window_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Buffer step index of every frame of the given windows, shape (len(window_ids), horizon)."""
        rows = self.windows[np.asarray(window_ids, dtype=np.int64)]
        steps = rows[:, :1] + self._offsets
        return np.clip(steps, rows[:, 1:2], rows[:, 2:3] - 1)

    def sample(self, window_ids: Sequence[int] | np.ndarray, keys: Sequence[str] | None = None) -> dict:
        """Arrays of shape (len(window_ids), horizon or first_steps[key], ...) for each key, gathered in one
        indexing pass."""
        steps = self.step_indices(window_ids)
        keys = self.arrays.keys() if keys is None else keys
        return {key: self._gather(self.arrays[key], steps[:, :self.first_steps.get(key, self.horizon)])
                for key in keys}

    @staticmethod
    def _gather(array, steps: np.ndarray) -> np.ndarray:
        """``array[steps]`` for numpy; a contiguous read per window for lazy (zarr) arrays."""
        if isinstance(array, np.ndarray):
            return array[steps]
        lows, highs = steps[:, 0], steps[:, -1] + 1
        return np.stack([np.asarray(array[low:high])[row - low]
                         for low, high, row in zip(lows, highs, steps)])
