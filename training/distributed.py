"""Training on several processes with PyTorch's DistributedDataParallel, started by ``torchrun``.

Semantics (the same for every recipe):
- ``training.batch_size`` is the *global* batch. Every rank draws the same global order (the loader's
  generator is seeded alike everywhere, reshuffled each epoch) and takes its contiguous part of each
  global batch of N samples: rank r gets n_r of them (``shard_sizes``; they differ by at most one).
- Its loss, a mean over its n_r samples, is scaled by n_r·W/N before backward; DDP averages gradients over
  the W ranks, so the update is the gradient of the global batch mean, Σ_r n_r L_r / N, as on one process.
  A rank left with no sample (N < W, a last batch) trains on one sample with weight 0.
- Weights, optimizer, EMA and normaliser stay identical on all ranks (checked at every checkpoint).
- Noise, dropout and augmentation come from each rank's own RNG stream: rank 0 keeps the one-process
  stream, rank r > 0 is reseeded from (seed, r). Rank 0 logs, evaluates and writes checkpoints; the
  checkpoint holds every rank's RNG state.
- Resume: on the same world size it is exact. On another world size the data order, weights, optimizer,
  EMA and schedule continue exactly (the global batch does not depend on W); ranks that existed before get
  their RNG states back, new ranks are reseeded from (seed, rank, step).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# Rank 0 evaluates (minutes of rollouts) while the others wait in their next collective call.
COLLECTIVE_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def topology_from_environment() -> Topology:
    """What torchrun says about this process (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""
    return Topology(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def current_topology() -> Topology:
    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Topology()


def start(device: str) -> tuple[Topology, str]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) when there is one; the topology and this
    rank's device (``cuda:LOCAL_RANK`` for a CUDA run)."""
    topology = topology_from_environment()
    if not topology.enabled or dist.is_initialized():
        return current_topology(), device
    if device.startswith("cuda"):
        device = f"cuda:{topology.local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return topology, device


def finish_together() -> None:
    """Wait until every rank is done with its collectives (a barrier), so that no rank tears the group down while
    a peer's gloo threads still talk to it (seen once: a rank aborting at exit after rank 0 had left)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_sizes(global_count: int, world_size: int) -> list[int]:
    """Samples of each rank in a global batch of ``global_count``: as equal as possible, the first ranks
    taking the remainder (``numpy.array_split``'s rule)."""
    base, extra = divmod(global_count, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def shard(indices: list[int], topology: Topology) -> list[int]:
    """This rank's contiguous part of a global batch; one placeholder index when it would be empty."""
    sizes = shard_sizes(len(indices), topology.world_size)
    start = sum(sizes[:topology.rank])
    return indices[start:start + sizes[topology.rank]] or indices[:1]


def loss_weight(global_count: int, topology: Topology) -> float:
    """n_r·W/N: scales rank r's mean loss so that DDP's gradient average is the global batch mean's gradient."""
    return shard_sizes(global_count, topology.world_size)[topology.rank] * topology.world_size / global_count


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for rank r's own RNG stream, independent of the other ranks'."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def all_sum(values: list[float]) -> list[float]:
    """Σ over ranks of each value (float64 on the CPU: gloo and NCCL both take it)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather(value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast(value):
    """Rank 0's ``value`` on every rank."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def fingerprint(*modules: torch.nn.Module) -> list[float]:
    """Σ x and Σ |x| over every parameter and buffer: equal on all ranks while they are in step."""
    tensors = [t.detach().double() for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return [float(sum(t.sum() for t in tensors)), float(sum(t.abs().sum() for t in tensors))]


class RanksOutOfStepError(RuntimeError):
    """The ranks' weights differ: a bug, never expected."""


def check_in_step(*modules: torch.nn.Module) -> None:
    prints = gather(fingerprint(*modules))
    if any(p != prints[0] for p in prints):
        raise RanksOutOfStepError(f"the ranks' weights differ (fingerprints {prints}); this is a bug, please report it")


class LossModule(torch.nn.Module):
    """``forward(batch) = model.compute_loss(batch)``, so DDP's hooks see the training forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.compute_loss(batch)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the model's training loss (parameters and buffers broadcast from rank 0 here)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(LossModule(model), device_ids=[device] if device.type == "cuda" else None)
