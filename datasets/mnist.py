"""MNIST from its IDX files, through the project's data setting (``<data root>/mnist``).

Split schemes, chosen explicitly (a run's config records it, so evaluation never silently changes data):
``test_split`` (the default; what ``../shared/data`` allows) splits the 10k test digits once by a fixed
permutation into 9,000 ``train`` and 1,000 ``heldout`` digits; ``official`` takes the 60k training files
(``train-images-idx3-ubyte[.gz]``) as ``train`` and the 10k test digits as ``heldout``.
Images are stored as uint8; ``finalize_batch`` maps them to x ∈ {−1, −1 + 2/255, …, 1} (256 levels), the
data space of the discretised decoder, so that bits/dim are those of the 8-bit images.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .paths import DATA_DIR_ENV, data_root, root_resolution

MNIST_DIR = "mnist"
FILES = {
    ("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
HELDOUT_OF_TEST = 1000
SPLIT_SEED = 0
SPLIT_SCHEMES = ("test_split", "official")


class MNISTDataError(FileNotFoundError):
    """MNIST files missing or malformed; the message says where it looked and what to do."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Array of an IDX file (gzipped or not): magic 0x0000 | dtype code | ndim, then ndim big-endian int32 sizes."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_DTYPES:
        raise MNISTDataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise MNISTDataError(f"{path} holds {len(raw)} bytes, its header promises {expected}: the file is truncated")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def mnist_folder(root: str | os.PathLike | None = None) -> Path:
    """``<data root>/mnist``, after checking that at least the test split is there."""
    folder = data_root(root) / MNIST_DIR
    if _find(folder, FILES[("test", "images")]) is None or _find(folder, FILES[("test", "labels")]) is None:
        looked = "\n".join(f"  - {origin}: {(path / MNIST_DIR).absolute()}" for origin, path, _ in root_resolution(root))
        raise MNISTDataError(
            f"MNIST not found. Looked for {FILES[('test', 'images')]}[.gz] and its labels in:\n{looked}\n"
            f"Fix: point ${DATA_DIR_ENV} (or the config key data_root) at the folder holding mnist/, or download "
            f"the official files with\n    python -m dpstack.datasets.download mnist")
    return folder


def load_split(split: str, root: str | os.PathLike | None = None,
               scheme: str = "test_split") -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of ``train`` or ``heldout`` (see the module docstring)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split scheme must be one of {SPLIT_SCHEMES}, got {scheme!r}")
    folder = mnist_folder(root)

    def read(kind_split: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(_find(folder, FILES[(kind_split, "images")]))
        labels = read_idx(_find(folder, FILES[(kind_split, "labels")])).astype(np.int64)
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise MNISTDataError(f"{folder}: {images.shape} images do not match {labels.shape} labels")
        return images, labels

    if scheme == "official":
        if not (_find(folder, FILES[("train", "images")]) and _find(folder, FILES[("train", "labels")])):
            raise MNISTDataError(f"split scheme 'official' needs the 60k training files in {folder}: fetch them with "
                                 f"python -m dpstack.datasets.download mnist (or use task.split_scheme=test_split)")
        return read("train" if split == "train" else "test")
    images, labels = read("test")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    chosen = order[HELDOUT_OF_TEST:] if split == "train" else order[:HELDOUT_OF_TEST]
    return images[chosen], labels[chosen]


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W) → float (…, 1, H, W) in [−1, 1]: x = 2·u/255 − 1."""
    return images.unsqueeze(-3).float().mul(2 / 255).sub(1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_model_space`` with rounding and clipping: u = round((x + 1)·255/2)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class MNISTDataset:
    """Digits of one split as a batch-gathering dataset (the interface of ``datasets.loader.BatchLoader``).

    ``max_items`` keeps the first n digits (tests, tiny overfitting runs).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, max_items: int | None = None,
                 scheme: str = "test_split"):
        images, labels = load_split(split, root, scheme)
        if max_items is not None:
            images, labels = images[:max_items], labels[:max_items]
        self.images, self.labels = torch.from_numpy(images.copy()), torch.from_numpy(labels)
        self.image_size = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, indices) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"image": self.images[index], "label": self.labels[index]}

    def finalize_batch(self, raw: dict, device=None) -> dict:
        """``{"image": (B, 1, H, W) float in [−1, 1], "label": (B,) int64}`` on ``device`` (if given)."""
        batch = {"image": to_model_space(raw["image"]), "label": raw["label"]}
        return batch if device is None else {key: value.to(device) for key, value in batch.items()}
