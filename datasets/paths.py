"""Where the data lives: one setting, with the shared development folder as fallback.

Resolution order for the data root:
1. an explicit argument (a config's ``data_root`` key),
2. the environment variable ``DP_DATA_DIR``,
3. ``../shared/data`` next to the repository (the development and CI copy),
4. ``./data`` in the current working directory (where ``python -m dpstack.datasets.download`` puts it).
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DP_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DOWNLOAD_DIR = Path("data")
PUSHT_ZARR_RELPATH = Path("pusht") / "pusht_cchi_v7_replay.zarr"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data root following the resolution order in the module docstring."""
    if explicit not in (None, ""):
        return Path(explicit).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    if SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR
    return DEFAULT_DOWNLOAD_DIR


def pusht_zarr_path(explicit_root: str | os.PathLike | None = None) -> Path:
    """Path of the Push-T replay buffer under the data root (it may not exist yet)."""
    return data_root(explicit_root) / PUSHT_ZARR_RELPATH


def missing_pusht_message(path: str | os.PathLike) -> str:
    """Explain where the Push-T store was looked for and how to provide it."""
    return (
        f"Push-T replay buffer not found at {path}.\n"
        f"Set the data root with the environment variable {DATA_DIR_ENV} or the config key 'data_root' "
        f"(the store must be <data_root>/{PUSHT_ZARR_RELPATH.as_posix()}), or download it with:\n"
        "    python -m dpstack.datasets.download pusht [--root DIR]"
    )
