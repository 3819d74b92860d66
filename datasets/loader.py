"""Batches without a per-sample collate: a worker gathers a whole batch in storage dtypes with one call of
``dataset.gather(indices)``, and this process turns it into training tensors with ``dataset.finalize_batch``.

Any dataset with ``__len__``, ``gather`` and ``finalize_batch`` works (Push-T windows, MNIST digits, text).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


class BatchDataset(Protocol):
    def __len__(self) -> int: ...

    def gather(self, indices) -> dict: ...

    def finalize_batch(self, raw: dict, device: torch.device | str | None = None) -> dict: ...


class _RawBatches(Dataset):
    """View of a dataset whose items are ``gather`` results for lists of indices."""

    def __init__(self, dataset: BatchDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, window_ids) -> dict:
        return self.dataset.gather(window_ids)


class _SkippableBatches:
    """A batch sampler whose next pass can skip its first k batches without gathering them; with a
    ``shard`` it yields that part of each batch (one rank's part of the global batch)."""

    def __init__(self, batch_sampler, shard=None) -> None:
        self.batch_sampler, self.skip, self.shard = batch_sampler, 0, shard

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, indices in enumerate(self.batch_sampler):
            if i >= skip:
                yield indices if self.shard is None else self.shard(indices)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class BatchLoader:
    """Iterable of training batches: workers gather storage-dtype batches, this process finalizes them.
    ``skip_next(k)`` makes the next pass start at batch k of its order (exact mid-epoch resume).
    ``shard(indices) -> indices`` keeps one rank's part of every batch (``training.distributed.shard``)."""

    def __init__(self, dataset: BatchDataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                 drop_last: bool = False, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None, shard=None):
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        self.dataset, self.device, self.batch_size, self.drop_last = dataset, device, batch_size, drop_last
        self.batches = _SkippableBatches(BatchSampler(order, batch_size, drop_last), shard)
        # A private generator for the DataLoader's per-pass base seed: otherwise every pass draws from
        # the global torch RNG, which training checkpoints save, and resumed runs would drift.
        self.loader = DataLoader(_RawBatches(dataset), batch_size=None, sampler=self.batches,
                                 num_workers=num_workers, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(0))

    def skip_next(self, n_batches: int) -> None:
        self.batches.skip = n_batches

    def __len__(self) -> int:
        return len(self.loader)

    def batch_size_at(self, k: int) -> int:
        """Samples in batch k of a pass, before any sharding (the last batch may be short)."""
        return self.batch_size if self.drop_last or k < len(self) - 1 else len(self.dataset) - self.batch_size * k

    def __iter__(self):
        for raw in self.loader:
            yield self.dataset.finalize_batch(raw, self.device)


def make_dataloader(dataset: BatchDataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    drop_last: bool = False, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None, shard=None) -> BatchLoader:
    """Batches of ``dataset`` with one vectorised gather per batch and no per-sample collate."""
    return BatchLoader(dataset, batch_size, shuffle, num_workers, drop_last, device, generator, shard)
