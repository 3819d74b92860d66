"""Classifier-FID of sample sets too large for one run: feature moments kept chunk by chunk in a ledger.

The Fréchet distance needs only the first two moments of the classifier features φ. With n, s = Σ φ and
S = Σ φφᵀ over a cell's samples, μ = s / n and Σ = (S − n μμᵀ) / (n − 1) (np.cov's unbiased estimate).
Chunk k of a cell holds samples kB … kB + B − 1, drawn from a generator seeded ``seed + kB``, so it does not
depend on the chunks before it; every finished chunk is added to its cell's sums and the ledger (.npz) is
rewritten atomically. A cell of 5,000 samples of the 1,000-step chain can thus be spread over several runs and
gives the numbers of one run (chunks are always added in order, so even the float sums are the same).
Several processes may share one ledger: a save re-reads the file under a lock and keeps, cell by cell, whichever
copy holds more samples (chunks are deterministic, so the longer copy extends the shorter one). Processes that
fill different cells lose nothing; two on the same cell at worst draw a chunk twice.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpstack.datasets.mnist import to_model_space, to_uint8
from dpstack.generative.classifier import FEATURE_DIM, gaussian_frechet_distance, predict_features


@dataclass
class CellMoments:
    """n, Σ φ and Σ φφᵀ of one cell's samples, and the sha256 of its first chunk's 8-bit samples."""

    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(FEATURE_DIM))
    outer: np.ndarray = field(default_factory=lambda: np.zeros((FEATURE_DIM, FEATURE_DIM)))
    first_chunk_sha: str = ""

    def add(self, features: np.ndarray) -> None:
        self.n += len(features)
        self.total += features.sum(0)
        self.outer += features.T @ features

    def gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Σ) with Σ = (S − n μμᵀ) / (n − 1)."""
        if self.n < 2:
            raise ValueError(f"a Gaussian fit needs at least 2 samples, this cell has {self.n}")
        mu = self.total / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def cell_key(sampler: str, eta: float, steps: int, variance: str | None = None) -> str:
    """The ledger's name of a cell: ``ddpm-<steps>`` (the model's own σ²), ``ddpm-<variance>-<steps>`` or
    ``ddim-eta<η>-<steps>``."""
    if sampler != "ddpm":
        return f"ddim-eta{eta:g}-{steps}"
    return f"ddpm-{steps}" if variance is None else f"ddpm-{variance}-{steps}"


class FIDLedger:
    """The moments of every cell of one sweep (model, seed, chunk size), kept in an .npz file."""

    FIELDS = ("n", "total", "outer", "first_chunk_sha")

    def __init__(self, path: str | Path | None, fingerprint: str, seed: int, chunk_size: int):
        self.path, self.header = (Path(path) if path else None), {"fingerprint": fingerprint, "seed": seed,
                                                                   "chunk_size": chunk_size}
        self.cells: dict[str, CellMoments] = {}
        self.refresh()

    @contextmanager
    def _locked(self):
        """An exclusive lock on ``.<name>.lock`` beside the ledger for a read-modify-write (not re-entrant)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def refresh(self) -> None:
        """Take from the file every cell whose stored copy holds more samples than this process's."""
        if self.path is None or not self.path.is_file():
            return
        with np.load(self.path) as stored:
            found = {name: stored[name].item() if name in stored else None for name in self.header}
            if found != self.header:
                raise ValueError(f"FID ledger {self.path} belongs to another sweep ({found}, not {self.header}); "
                                 "delete it or give another --ledger")
            for key in {name.split("/")[0] for name in stored.files if "/" in name}:
                if int(stored[f"{key}/n"]) > self.cell(key).n:
                    self.cells[key] = CellMoments(int(stored[f"{key}/n"]), stored[f"{key}/total"].copy(),
                                                  stored[f"{key}/outer"].copy(), str(stored[f"{key}/first_chunk_sha"]))

    def save(self) -> None:
        """Under the lock, merge the file's longer cells in, then rewrite it atomically (temporary file, then
        rename); no file without a path."""
        if self.path is None:
            return
        with self._locked():
            self.refresh()
            arrays = {name: np.array(value) for name, value in self.header.items()}
            for key, cell in self.cells.items():
                arrays.update({f"{key}/{f}": np.array(getattr(cell, f)) for f in self.FIELDS})
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(temporary, self.path)

    def fill(self, model, classifier, sampler: str, eta: float, steps: int, n: int, deadline: float = float("inf"),
             progress=None, variance: str | None = None) -> CellMoments:
        """Sample the cell's missing chunks up to n samples, stopping between chunks after ``deadline`` (a
        time.monotonic() value); chunk k is drawn from a generator seeded ``seed + k·chunk_size``. ``variance``:
        DDPM's σ² (None: the model's own)."""
        key, size, seed = cell_key(sampler, eta, steps, variance), self.header["chunk_size"], self.header["seed"]
        if self.path is not None:
            with self._locked():
                self.refresh()  # what other processes sharing the ledger have added
        if progress is not None:
            progress.update(min(self.cell(key).n, n))  # samples of earlier runs
        while (start := self.cell(key).n) < n and time.monotonic() < deadline:
            if start % size:
                raise ValueError(f"cell {key} holds {start} samples, not whole chunks of {size}")
            generator = torch.Generator(device=model.device).manual_seed(seed + start)
            digits = to_uint8(model.sample(min(size, n - start), sampler, steps, eta, generator=generator,
                                           variance=variance).cpu())
            cell = self.cells.setdefault(key, CellMoments())
            if start == 0:
                cell.first_chunk_sha = hashlib.sha256(digits.numpy().tobytes()).hexdigest()
            cell.add(predict_features(classifier, to_model_space(digits.squeeze(1)))[0])
            self.save()
            if progress is not None:
                progress.update(min(self.cell(key).n, n) - start)
        return self.cell(key)

    def cell(self, key: str) -> CellMoments:
        """A cell's moments (empty when it holds no samples yet)."""
        return self.cells.get(key, CellMoments())

    def frechet_distance(self, key: str, reference_features: np.ndarray) -> float:
        """Fréchet distance between the cell's Gaussian and the reference features' Gaussian."""
        mu, cov = self.cell(key).gaussian()
        return gaussian_frechet_distance(mu, cov, reference_features.mean(0), np.cov(reference_features, rowvar=False))
