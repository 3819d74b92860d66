"""Data pipeline: replay buffer, window sampler, normalizer, Push-T datasets and download.

Names are imported lazily so that ``from datasets.normalizer import LinearNormalizer``
needs only torch and numpy (no zarr or numba).
"""
from importlib import import_module

_EXPORTS = {
    "ReplayBuffer": "replay_buffer",
    "ReplayBufferError": "replay_buffer",
    "SequenceSampler": "sampler",
    "train_validation_masks": "sampler",
    "LinearNormalizer": "normalizer",
    "PushTLowdimDataset": "pusht",
    "PushTImageDataset": "pusht",
    "make_dataloader": "pusht",
    "ensure_pusht": "download",
    "data_root": "paths",
    "pusht_zarr_path": "paths",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module defining ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
