"""Episode storage on zarr: ``data/<key>`` step arrays plus ``meta/episode_ends``.

A buffer lives either in memory (numpy arrays) or on disk (zarr arrays read lazily).
Disk writes are crash-safe: step arrays are appended first and the new episode is
committed last by writing its entry in ``meta/episode_ends``. Anything past the last
committed episode (a write interrupted by a crash) is ignored on open and overwritten
by the next ``add_episode``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import zarr

EPISODE_ENDS = "meta/episode_ends"
CHUNK_TARGET_BYTES = 2 << 20
EPISODE_ENDS_CHUNK = 4096
READ_THREADS = 2


class ReplayBufferError(ValueError):
    """A store whose layout or contents do not form a valid replay buffer."""


def _compressor(zarr_format: int):
    """Blosc/zstd with bit shuffling, the codec of the original Push-T store."""
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _committed_episode_ends(raw_ends: np.ndarray, where: str) -> np.ndarray:
    """Validated episode ends, dropping trailing zero entries left by an interrupted commit."""
    ends = np.asarray(raw_ends, dtype=np.int64)
    n_committed = len(ends)
    while n_committed > 0 and ends[n_committed - 1] == 0:
        n_committed -= 1
    ends = ends[:n_committed]
    bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
    if len(bad):
        raise ReplayBufferError(
            f"{where}: meta/episode_ends is not strictly increasing at index {bad[0]} "
            f"(values {ends[max(bad[0] - 1, 0):bad[0] + 1].tolist()}); the store is corrupted. "
            "Re-download it (python -m dpstack.datasets.download pusht) or regenerate it."
        )
    return ends


def _chunk_length(step_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Steps per chunk so that one chunk holds about CHUNK_TARGET_BYTES."""
    step_bytes = int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, CHUNK_TARGET_BYTES // max(step_bytes, 1)))


def _read_array(array: zarr.Array, n_steps: int, dtype: np.dtype | None) -> np.ndarray:
    """The first ``n_steps`` rows of a zarr array as numpy, cast chunk by chunk to ``dtype``."""
    out_dtype = np.dtype(dtype) if dtype is not None else array.dtype
    out = np.empty((n_steps,) + tuple(array.shape[1:]), dtype=out_dtype)
    if n_steps == 0:
        return out
    chunk = array.chunks[0]
    rounding = np.issubdtype(out_dtype, np.integer) and not np.issubdtype(array.dtype, np.integer)

    def copy_chunk(start: int) -> None:
        stop = min(start + chunk, n_steps)
        block = array[start:stop]
        out[start:stop] = np.rint(block, out=block) if rounding else block

    with ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(copy_chunk, range(0, n_steps, chunk)))
    return out


class ReplayBuffer:
    """Episodes of aligned per-step arrays, in memory (numpy) or on disk (zarr).

    Build one with ``ReplayBuffer.load`` (into memory), ``ReplayBuffer.open`` (lazy,
    on disk), ``ReplayBuffer.create`` (new store on disk) or ``ReplayBuffer.empty``
    (new buffer in memory).
    """

    def __init__(self, arrays: dict, episode_ends: np.ndarray, group: zarr.Group | None = None,
                 path: Path | None = None):
        self._arrays = arrays
        self._episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self._group = group
        self.path = path

    # ----------------------------------------------------------------- construction
    @classmethod
    def empty(cls) -> "ReplayBuffer":
        """A new buffer in memory with no episodes."""
        return cls({}, np.zeros(0, dtype=np.int64))

    @classmethod
    def create(cls, path: str | os.PathLike, zarr_format: int = 3, overwrite: bool = False) -> "ReplayBuffer":
        """A new on-disk store at ``path`` with the dataset layout and no episodes."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; open it with ReplayBuffer.open(path, mode='a') "
                                  "or pass overwrite=True to replace it.")
        root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
        root.require_group("data")
        root.require_group("meta").create_array(
            "episode_ends", shape=(0,), chunks=(EPISODE_ENDS_CHUNK,), dtype=np.int64,
            fill_value=0, compressors=_compressor(zarr_format))
        return cls({}, np.zeros(0, dtype=np.int64), group=root, path=path)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", keys: Iterable[str] | None = None) -> "ReplayBuffer":
        """An on-disk buffer whose arrays are read lazily; ``mode='a'`` allows ``add_episode``."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        root, arrays, ends, path = cls._open_validated(path, mode, keys)
        return cls(arrays, ends, group=root, path=path)

    @classmethod
    def load(cls, path: str | os.PathLike, keys: Iterable[str] | None = None,
             dtypes: Mapping[str, np.dtype] | None = None) -> "ReplayBuffer":
        """A copy of the store in memory; ``dtypes`` casts chosen keys while reading (floats are rounded for ints)."""
        _, arrays, ends, path = cls._open_validated(path, "r", keys)
        n_steps = int(ends[-1]) if len(ends) else 0
        dtypes = dict(dtypes or {})
        loaded = {key: _read_array(array, n_steps, dtypes.get(key)) for key, array in arrays.items()}
        return cls(loaded, ends, path=path)

    @staticmethod
    def _open_validated(path, mode: str, keys: Iterable[str] | None):
        """Open the zarr group at ``path`` and check its layout against the episode ends."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No replay buffer at {path}.")
        try:
            root = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
            raise ReplayBufferError(f"{path} is not a zarr group ({error}).") from error
        if "data" not in root or EPISODE_ENDS not in root:
            raise ReplayBufferError(
                f"{path} lacks the 'data' group or '{EPISODE_ENDS}'; a replay buffer store has "
                "data/<key> arrays and meta/episode_ends. Create new stores with ReplayBuffer.create.")
        ends = _committed_episode_ends(root[EPISODE_ENDS][:], str(path))
        n_steps = int(ends[-1]) if len(ends) else 0
        available = sorted(root["data"].array_keys())
        wanted = available if keys is None else list(keys)
        missing = [key for key in wanted if key not in available]
        if missing:
            raise ReplayBufferError(
                f"{path}: missing key(s) {missing} under data/ (available: {available}). "
                "Request only available keys or regenerate the store with them.")
        arrays = {}
        for key in wanted:
            array = root["data"][key]
            if array.shape[0] < n_steps:
                raise ReplayBufferError(
                    f"{path}: data/{key} has {array.shape[0]} steps but meta/episode_ends[-1] is {n_steps}; "
                    "the store is truncated. Re-download it (python -m dpstack.datasets.download pusht) or regenerate it.")
            arrays[key] = array
        return root, arrays, ends, path

    # ----------------------------------------------------------------- queries
    @property
    def backend(self) -> str:
        """``'zarr'`` for a disk-backed buffer, ``'numpy'`` for one in memory."""
        return "numpy" if self._group is None else "zarr"

    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive end step of every episode (int64)."""
        return self._episode_ends

    @property
    def episode_lengths(self) -> np.ndarray:
        """Number of steps in every episode."""
        return np.diff(self._episode_ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        """Number of steps over all committed episodes."""
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    def keys(self) -> list[str]:
        """Names of the per-step arrays."""
        return list(self._arrays)

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def __getitem__(self, key: str):
        """The step array for ``key``: numpy (committed steps only) or the zarr array.

        A zarr array opened read-only after an interrupted write may hold extra rows
        past ``n_steps``; they are not part of any episode.
        """
        if key not in self._arrays:
            raise KeyError(f"No key {key!r} in replay buffer (keys: {self.keys()}).")
        array = self._arrays[key]
        return array[: self.n_steps] if self._group is None else array

    def get_episode(self, index: int) -> dict[str, np.ndarray]:
        """All arrays of episode ``index`` (negative counts from the end) as numpy."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range for {self.n_episodes} episodes")
        index %= self.n_episodes
        stop = int(self._episode_ends[index])
        start = int(self._episode_ends[index - 1]) if index > 0 else 0
        return {key: np.asarray(array[start:stop]) for key, array in self._arrays.items()}

    def __repr__(self) -> str:
        return (f"ReplayBuffer(backend={self.backend}, n_episodes={self.n_episodes}, "
                f"n_steps={self.n_steps}, keys={self.keys()})")

    # ----------------------------------------------------------------- writing
    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode (dict of arrays with equal first dimension) and commit it."""
        episode = {key: np.asarray(value) for key, value in episode.items()}
        length = self._validate_episode(episode)
        if self._group is None:
            self._append_in_memory(episode, length)
        else:
            self._append_on_disk(episode, length)
        self._episode_ends = np.append(self._episode_ends, self.n_steps + length)

    def _validate_episode(self, episode: dict[str, np.ndarray]) -> int:
        """Length of the episode after checking its keys, lengths and shapes against the buffer."""
        if not episode:
            raise ValueError("add_episode needs at least one array")
        lengths = {key: (value.shape[0] if value.ndim else 0) for key, value in episode.items()}
        length = next(iter(lengths.values()))
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"episode arrays must share a non-zero first dimension, got {lengths}")
        if self.n_episodes > 0 and set(episode) != set(self._arrays):
            raise ValueError(f"episode keys {sorted(episode)} differ from the buffer's keys {sorted(self._arrays)}")
        for key, value in episode.items():
            existing = self._arrays.get(key)
            if existing is not None and tuple(existing.shape[1:]) != value.shape[1:]:
                raise ValueError(f"{key}: step shape {value.shape[1:]} differs from the buffer's "
                                 f"{tuple(existing.shape[1:])}")
        return length

    def _append_in_memory(self, episode: dict[str, np.ndarray], length: int) -> None:
        """Copy the episode into the numpy arrays, growing capacity geometrically."""
        start, needed = self.n_steps, self.n_steps + length
        for key, value in episode.items():
            array = self._arrays.get(key)
            if array is None or len(array) < needed:
                capacity = max(needed, 2 * (0 if array is None else len(array)))
                grown = np.empty((capacity,) + value.shape[1:], dtype=value.dtype if array is None else array.dtype)
                if array is not None:
                    grown[:start] = array[:start]
                self._arrays[key] = array = grown
            array[start:needed] = value

    def _append_on_disk(self, episode: dict[str, np.ndarray], length: int) -> None:
        """Write step arrays past the committed end, then commit the new episode end."""
        if self._group.read_only:
            raise PermissionError(f"{self.path} is open read-only; use ReplayBuffer.open(path, mode='a')")
        data = self._group["data"]
        start, needed = self.n_steps, self.n_steps + length
        for orphan in [key for key in self._arrays if key not in episode]:
            del data[orphan]  # only reachable with no committed episode: left by an interrupted first write
            del self._arrays[orphan]
        for key, value in episode.items():
            array = self._arrays.get(key)
            if array is None:
                array = data.create_array(
                    key, shape=(0,) + value.shape[1:], dtype=value.dtype,
                    chunks=(_chunk_length(value.shape[1:], value.dtype),) + value.shape[1:],
                    compressors=_compressor(self._group.metadata.zarr_format), overwrite=True)
                self._arrays[key] = array
            array.resize((needed,) + tuple(array.shape[1:]))
            array[start:needed] = value
        ends = self._group[EPISODE_ENDS]
        if ends.shape[0] < self.n_episodes + 1:
            ends.resize((self.n_episodes + 1,))
        ends[self.n_episodes] = needed
