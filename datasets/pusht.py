"""Push-T training datasets (low-dimensional keypoints and images) over the replay buffer.

Samples are gathered for a whole batch at once: ``dataset[[i, j, ...]]`` returns one
batched dict, and ``make_dataloader`` feeds such batches to a DataLoader without a
per-sample collate. Images stay uint8 in memory and become float once per batch.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .loader import make_dataloader  # noqa: F401  (re-exported: the Push-T loader)
from .normalizer import LinearNormalizer, unit_range_to_symmetric
from .paths import DataNotFoundError, missing_pusht_message, pusht_zarr_path
from .replay_buffer import ReplayBuffer
from .sampler import SequenceSampler, train_validation_masks

IMAGE_SCALE = np.float32(1.0 / 255.0)


def resolve_pusht_path(zarr_path: str | os.PathLike | None) -> Path:
    """The given store path, or the data setting's; raises DataNotFoundError with instructions if absent."""
    path = Path(zarr_path) if zarr_path is not None else pusht_zarr_path()
    if not path.exists():
        raise DataNotFoundError(missing_pusht_message(store=zarr_path))
    return path


class _PushTWindowDataset(Dataset):
    """Shared machinery: in-memory step arrays, the episode split and the window sampler."""

    def __init__(self, arrays: dict[str, np.ndarray], episode_ends: np.ndarray, horizon: int,
                 pad_before: int, pad_after: int, seed: int, val_ratio: float,
                 max_train_episodes: int | None, mirrored: dict[str, np.ndarray] | None = None,
                 first_steps: dict[str, int] | None = None, n_extra_episodes: int = 0):
        """``mirrored``: the same steps reflected across the goal T's axis, appended as a second copy of
        every episode; the split is drawn over the recorded episodes and a copy follows its original.
        The last ``n_extra_episodes`` episodes (added data, e.g. rollouts) always train, never validate."""
        n_split = len(episode_ends) - n_extra_episodes
        self.train_mask, self.val_mask = train_validation_masks(n_split, val_ratio, seed, max_train_episodes)
        self.train_mask = np.concatenate([self.train_mask, np.ones(n_extra_episodes, dtype=bool)])
        self.val_mask = np.concatenate([self.val_mask, np.zeros(n_extra_episodes, dtype=bool)])
        if mirrored is not None:
            arrays = {key: np.concatenate([value, mirrored[key]]) for key, value in arrays.items()}
            episode_ends = np.concatenate([episode_ends, episode_ends + episode_ends[-1]])
            self.train_mask, self.val_mask = np.tile(self.train_mask, 2), np.tile(self.val_mask, 2)
        self.arrays = arrays
        self.episode_ends = episode_ends
        self.horizon, self.pad_before, self.pad_after = horizon, pad_before, pad_after
        self.first_steps = first_steps
        self.sampler = self._sampler(self.train_mask)

    def _sampler(self, episode_mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(self.arrays, self.episode_ends, self.horizon, self.pad_before,
                               self.pad_after, episode_mask, self.first_steps)

    def get_validation_dataset(self) -> "_PushTWindowDataset":
        """The same data restricted to the validation episodes (all episodes not used for training)."""
        validation = copy.copy(self)
        validation.sampler = self._sampler(self.val_mask)
        return validation

    def __len__(self) -> int:
        return len(self.sampler)

    def _window_ids(self, index) -> np.ndarray:
        """Window ids as an int64 array, with negative indices wrapped and bounds checked."""
        ids = np.asarray(index, dtype=np.int64)
        if ids.size and (ids.min() < -len(self) or ids.max() >= len(self)):
            raise IndexError(f"index out of range for dataset of length {len(self)}")
        return ids % max(len(self), 1)

    def __getitem__(self, index):
        """One sample (int index) or a batched sample dict (sequence of indices)."""
        if np.ndim(index) == 0:
            return _select(self.batch(self._window_ids([index])), 0)
        return self.batch(self._window_ids(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Samples for DataLoader auto-batching, gathered in one vectorised pass."""
        batch = self.batch(self._window_ids(indices))
        return [_select(batch, row) for row in range(len(indices))]

    def batch(self, window_ids: np.ndarray, device: torch.device | str | None = None) -> dict:
        """Batched sample dict of float32 tensors for the given window ids."""
        return self.finalize_batch(self.raw_batch(window_ids), device)

    def gather(self, indices) -> dict:
        """``raw_batch`` of dataset indices (the interface ``datasets.loader.BatchLoader`` reads)."""
        return self.raw_batch(self._window_ids(indices))

    def raw_batch(self, window_ids: np.ndarray) -> dict:
        """Batched sample in storage dtypes (cheap to send between processes): (B, T, ...) tensors per key."""
        return {key: torch.from_numpy(value) for key, value in self.sampler.sample(window_ids).items()}

    def finalize_batch(self, raw: dict, device: torch.device | str | None = None) -> dict:
        """Training-ready batch from ``raw_batch`` output, moved to ``device`` if given."""
        raise NotImplementedError


def _extra_store(path: str | os.PathLike) -> ReplayBuffer:
    """A replay buffer of added episodes, with a clear error if it is missing or lacks state and action."""
    if not Path(path).exists():
        raise DataNotFoundError(f"extra episode store {path} does not exist; make one with "
                                f"python -m dpstack.datasets.rollouts CKPT {path}, or remove it from "
                                "task.dataset.extra_stores")
    buffer = ReplayBuffer.load(path)
    missing = [key for key in ("state", "action") if key not in buffer]
    if missing:
        raise ValueError(f"extra episode store {path} lacks {missing}: it needs the official layout "
                         "(data/state (N, 5), data/action (N, 2))")
    return buffer


def _select(tree, row: int):
    """Entry ``row`` of every tensor in a (possibly nested) dict."""
    return {key: _select(value, row) if isinstance(value, dict) else value[row] for key, value in tree.items()}


def block_keypoint_targets(state: np.ndarray) -> np.ndarray:
    """The block's 9 keypoints (N, 18) at env states (N, 5): the low-dim observation less the agent."""
    from dpstack.envs.geometry import block_keypoints_batch  # only the derived datasets need the env

    return block_keypoints_batch(np.asarray(state[:, 2:5], dtype=np.float64)).reshape(len(state), -1).astype(np.float32)


def lowdim_steps(state: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
    """Low-dim steps computed from env states: obs = the 9 keypoints of the block pose, then the agent."""
    obs = np.concatenate([block_keypoint_targets(state), np.asarray(state[:, :2], dtype=np.float32)], axis=-1)
    return {"obs": obs, "action": np.asarray(action, dtype=np.float32)}


def mirrored_lowdim_steps(state: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
    """Low-dim steps of the demonstrations reflected across the goal T's axis (``envs.geometry.mirror_points``):
    agent and actions reflected, keypoints recomputed from the reflected block pose."""
    from dpstack.envs.geometry import mirror_points, mirror_states  # only the mirror needs the env

    return lowdim_steps(mirror_states(state.astype(np.float64)), mirror_points(action.astype(np.float64)))


def goal_aligned_demonstrations(state: np.ndarray, action: np.ndarray,
                                episode_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every demonstration moved rigidly (``envs.geometry.move_states``) so that its last recorded block pose
    is the goal pose: the same pushes, ending at coverage 1 instead of the recorded ~0.85.

    An episode whose block comes within reach of a wall, recorded or moved, or whose moved actions leave the
    workspace (the env clips them), stays as recorded: the walls are the one thing a rigid motion does not
    carry along. ``clear_of_walls`` also keeps the agent's disc off the walls, a cautious extra (the
    kinematic agent does not collide with them). Returns (states, actions, aligned), ``aligned`` a bool per
    episode."""
    from dpstack.envs.geometry import GOAL_POSE, WORKSPACE_SIZE, clear_of_walls, move_points, move_states

    state, action = state.astype(np.float64), action.astype(np.float64)
    moved_state, moved_action = state.copy(), action.copy()
    aligned = np.zeros(len(episode_ends), dtype=bool)
    for episode, (start, end) in enumerate(zip(np.concatenate([[0], episode_ends[:-1]]), episode_ends)):
        final_pose = state[end - 1, 2:5]
        states = move_states(state[start:end], final_pose, GOAL_POSE)
        actions = move_points(action[start:end], final_pose, GOAL_POSE)
        if (clear_of_walls(state[start:end]) and clear_of_walls(states)
                and actions.min() >= 0 and actions.max() <= WORKSPACE_SIZE):
            moved_state[start:end], moved_action[start:end], aligned[episode] = states, actions, True
    return moved_state, moved_action, aligned


def mirrored_image_steps(images: np.ndarray, state: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
    """Image steps reflected across the goal T's axis: images (N, C, H, W) are anti-transposed, pixel
    (r, c) -> (W − 1 − c, H − 1 − r), as a view (the caller's concatenation makes the one copy).

    pygame draws world point p at canvas pixel round(p), so the anti-transpose of the 512-pixel canvas is
    the reflection across x + y = 511, the nearest pixel permutation to the state's x + y = 512 (1 canvas
    pixel, 0.19 observation pixel apart); the 512 -> 96 resize, s = (d + ½)·512/96 − ½, commutes with it.
    """
    from dpstack.envs.geometry import GOAL_POSE, GOAL_REFLECTION, mirror_points  # only the mirror needs the env

    if not (np.array_equal(GOAL_REFLECTION, [[0, -1], [-1, 0]]) and GOAL_POSE[0] + GOAL_POSE[1] == 512):
        raise ValueError("image mirroring assumes the goal axis x + y = 512; it does not hold for this GOAL_POSE")
    return {"image": images[:, :, ::-1, ::-1].transpose(0, 1, 3, 2),
            "agent_pos": mirror_points(state[:, :2]).astype(np.float32),
            "action": mirror_points(action).astype(np.float32)}


class PushTLowdimDataset(_PushTWindowDataset):
    """Windows of ``{"obs": (T, 20), "action": (T, 2)}``; obs = 9 keypoints (x, y) then agent position.

    ``mirror=True`` appends every demonstration reflected across the goal T's axis of symmetry, which
    doubles the data; a reflected episode trains or validates with its original. ``align_to_goal=True``
    replaces each demonstration by its copy moved to end exactly on the goal (``goal_aligned_demonstrations``;
    ``aligned_episodes`` says which were), before any mirroring. ``extra_stores`` are replay buffers of more
    episodes in the official layout (``state``, ``action``; e.g. ``datasets.rollouts``), appended after the
    demonstrations as recorded (not goal-aligned), mirrored with them, and always in the training split.
    """

    def __init__(self, zarr_path: str | os.PathLike | None = None, horizon: int = 16, pad_before: int = 1,
                 pad_after: int = 7, seed: int = 42, val_ratio: float = 0.02, max_train_episodes: int | None = 90,
                 mirror: bool = False, align_to_goal: bool = False,
                 extra_stores: Sequence[str | os.PathLike] | None = None):
        buffer = ReplayBuffer.load(resolve_pusht_path(zarr_path), keys=["keypoint", "state", "action"])
        state, action, keypoints = buffer["state"], buffer["action"], buffer["keypoint"]
        obs = np.concatenate([keypoints.reshape(len(keypoints), -1), state[:, :2]], axis=-1)
        arrays = {"obs": np.ascontiguousarray(obs, dtype=np.float32),
                  "action": np.array(action, dtype=np.float32)}  # a copy: aligned rows are written below
        self.aligned_episodes = np.zeros(len(buffer.episode_ends), dtype=bool)
        if align_to_goal:
            state, action, self.aligned_episodes = goal_aligned_demonstrations(state, action, buffer.episode_ends)
            moved = np.repeat(self.aligned_episodes, np.diff(buffer.episode_ends, prepend=0))
            for key, value in lowdim_steps(state[moved], action[moved]).items():
                arrays[key][moved] = value
        episode_ends, n_extra = buffer.episode_ends, 0
        for store in extra_stores or []:
            extra = _extra_store(store)
            steps = lowdim_steps(extra["state"], extra["action"])
            arrays = {key: np.concatenate([arrays[key], steps[key]]) for key in arrays}
            state, action = np.concatenate([state, extra["state"]]), np.concatenate([action, extra["action"]])
            episode_ends = np.concatenate([episode_ends, episode_ends[-1] + extra.episode_ends])
            n_extra += extra.n_episodes
        mirrored = mirrored_lowdim_steps(state, action) if mirror else None
        super().__init__(arrays, episode_ends, horizon, pad_before, pad_after, seed, val_ratio,
                         max_train_episodes, mirrored, n_extra_episodes=n_extra)

    def finalize_batch(self, raw: dict, device: torch.device | str | None = None) -> dict:
        """``raw`` itself (already float32), moved to ``device`` if given."""
        return raw if device is None else {key: value.to(device) for key, value in raw.items()}

    def get_normalizer(self, mode: str = "limits") -> LinearNormalizer:
        """Normalizer for ``obs`` and ``action`` fitted on every step of every episode."""
        return LinearNormalizer().fit(self.arrays, mode=mode)


class PushTImageDataset(_PushTWindowDataset):
    """Windows of ``{"obs": {"image": (T, 3, 96, 96) in [0, 1], "agent_pos": (T, 2)}, "action": (T, 2)}``.

    ``mirror=True`` appends every demonstration reflected across the goal T's axis (images anti-transposed).
    ``n_obs_steps=k`` gathers ``obs`` for the first k steps of each window only, the ones a policy with
    ``n_obs_steps=k`` conditions on (``obs`` is then (k, ...); training passes it, 8x fewer images for k = 2).
    ``keypoint_targets=True`` adds ``"aux_keypoints": (T, 18)``, the block's 9 keypoints per step (the low-dim
    observation less the agent), as targets of a training-only loss (``policy.aux_keypoint_weight``).
    """

    def __init__(self, zarr_path: str | os.PathLike | None = None, horizon: int = 16, pad_before: int = 1,
                 pad_after: int = 7, seed: int = 42, val_ratio: float = 0.02, max_train_episodes: int | None = 90,
                 mirror: bool = False, n_obs_steps: int | None = None, keypoint_targets: bool = False):
        buffer = ReplayBuffer.load(resolve_pusht_path(zarr_path), keys=["img", "state", "action"],
                                   dtypes={"img": np.uint8})
        channels_first = torch.from_numpy(buffer["img"]).permute(0, 3, 1, 2).contiguous().numpy()
        arrays = {"image": channels_first,
                  "agent_pos": np.ascontiguousarray(buffer["state"][:, :2], dtype=np.float32),
                  "action": np.ascontiguousarray(buffer["action"], dtype=np.float32)}
        if keypoint_targets:
            arrays["aux_keypoints"] = block_keypoint_targets(buffer["state"])
        mirrored = None
        if mirror:
            mirrored = mirrored_image_steps(channels_first, buffer["state"], buffer["action"])
            if keypoint_targets:
                from dpstack.envs.geometry import mirror_states  # only the mirror needs the env

                mirrored["aux_keypoints"] = block_keypoint_targets(mirror_states(buffer["state"].astype(np.float64)))
        first_steps = None if n_obs_steps is None else {key: n_obs_steps for key in arrays if key != "action"}
        super().__init__(arrays, buffer.episode_ends, horizon, pad_before, pad_after, seed, val_ratio,
                         max_train_episodes, mirrored, first_steps)

    def finalize_batch(self, raw: dict, device: torch.device | str | None = None) -> dict:
        """Nested float32 batch; images are scaled to [0, 1] in one pass (on ``device`` when given)."""
        image = raw["image"]
        if device is None or torch.device(device).type == "cpu":
            image = torch.from_numpy(np.multiply(image.numpy(), IMAGE_SCALE, dtype=np.float32))
        else:
            image = image.to(device, non_blocking=True).to(torch.float32).mul_(float(IMAGE_SCALE))
        batch = {"obs": {"image": image, "agent_pos": _to(raw["agent_pos"], device)},
                 "action": _to(raw["action"], device)}
        if "aux_keypoints" in raw:
            batch["aux_keypoints"] = _to(raw["aux_keypoints"], device)
        return batch

    def get_normalizer(self, mode: str = "limits") -> LinearNormalizer:
        """Normalizer for ``agent_pos``, ``action`` and ``aux_keypoints`` if present (fitted on all steps) and the
        fixed [0,1]→[-1,1] ``image`` map."""
        normalizer = LinearNormalizer().fit(
            {key: value for key, value in self.arrays.items() if key != "image"}, mode=mode)
        normalizer["image"] = unit_range_to_symmetric()
        return normalizer


def _to(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor if device is None else tensor.to(device, non_blocking=True)
