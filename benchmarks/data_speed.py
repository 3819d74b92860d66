"""Push-T data pipeline speed: dataset build time and DataLoader throughput.

Usage: python benchmarks/data_speed.py [--zarr PATH] [--repeats 3] [--batches 30]

Reports medians over ``--repeats`` runs. Loaders: ``make_dataloader`` (batched gather,
uint8 images converted once per batch in the main process) and a plain
``DataLoader(batch_size=...)`` (auto-batching through ``__getitems__`` + default collate).
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader


from dpstack.datasets.pusht import PushTImageDataset, PushTLowdimDataset, make_dataloader  # noqa: E402

# The original loader's numbers (it gathers all 16 frames of every key). "image, obs 2" is what training
# uses: only the n_obs_steps = 2 frames of the observations that the policy conditions on.
REFERENCE = {"lowdim": {"build_s": 0.72, "samples_per_s": 105_000},
             "image": {"build_s": 4.5, "samples_per_s": 705},
             "image, obs 2": {"build_s": 4.5, "samples_per_s": 705}}
BATCH_SIZES = {"lowdim": 256, "image": 64, "image, obs 2": 64}
DATASETS = {"lowdim": PushTLowdimDataset, "image": PushTImageDataset,
            "image, obs 2": functools.partial(PushTImageDataset, n_obs_steps=2)}


def median_build_time(kind: str, zarr_path, repeats: int):
    """Median seconds to construct the dataset, and the last dataset built."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dataset = DATASETS[kind](zarr_path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), dataset


def samples_per_second(loader, n_batches: int) -> float:
    """Throughput over ``n_batches`` batches after one warm-up batch (worker start-up excluded)."""
    iterator = iter(loader)
    next(iterator)
    samples, start = 0, time.perf_counter()
    for _, batch in zip(range(n_batches), iterator):
        samples += len(batch["action"])
    rate = samples / (time.perf_counter() - start)
    del iterator, batch
    gc.collect()  # stop this loader's workers before the next measurement
    return rate


def make_loader(style: str, dataset, batch_size: int, num_workers: int):
    if style == "batched":
        return make_dataloader(dataset, batch_size, shuffle=True, num_workers=num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zarr", default=None, help="Push-T store (default: datasets.paths.pusht_zarr_path())")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} batches={args.batches} loadavg(1m)={os.getloadavg()[0]:.2f}")
    rows = []
    for kind in DATASETS:
        build_s, dataset = median_build_time(kind, args.zarr, args.repeats)
        rows.append((kind, "build", "-", f"{build_s:.2f} s", f"{REFERENCE[kind]['build_s'] / build_s:.2f}x"))
        for workers in (0, 2):
            for style in ("batched", "plain"):
                rates = [samples_per_second(make_loader(style, dataset, BATCH_SIZES[kind], workers), args.batches)
                         for _ in range(args.repeats)]
                rate = statistics.median(rates)
                ratio = rate / REFERENCE[kind]["samples_per_s"]
                rows.append((kind, f"{style} b={BATCH_SIZES[kind]}", str(workers), f"{rate:,.0f} samples/s",
                             f"{ratio:.2f}x"))
        del dataset
    header = ("dataset", "measure", "workers", "median", "vs reference")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    print(f"loadavg(1m) at end={os.getloadavg()[0]:.2f}")
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
