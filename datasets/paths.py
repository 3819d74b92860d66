"""Where the data lives: one setting, with the shared development folder as fallback.

Resolution order for the data root:
1. an explicit argument (a config's ``data_root`` key),
2. the environment variable ``DP_DATA_DIR``,
3. ``../shared/data`` next to the repository (the development and CI copy),
4. ``./data`` in the current working directory (where ``python -m dpstack.datasets.download`` puts it).

An explicit setting (1 or 2) is used alone; 3 and 4 are the fallbacks.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DP_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DOWNLOAD_DIR = Path("data")
PUSHT_ZARR_RELPATH = Path("pusht") / "pusht_cchi_v7_replay.zarr"


class DataNotFoundError(FileNotFoundError):
    """The data is not where the data setting points; the message lists where it looked and the fix."""


def root_resolution(explicit: str | os.PathLike | None = None) -> list[tuple[str, Path, bool]]:
    """The data-root candidates in resolution order, up to the one that is used: ``(origin, path, used)``."""
    if explicit not in (None, ""):
        return [("config key data_root", Path(explicit).expanduser(), True)]
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return [(f"${DATA_DIR_ENV}", Path(from_env).expanduser(), True)]
    shared = ("the shared development folder", SHARED_DATA_DIR, SHARED_DATA_DIR.is_dir())
    return [shared] if shared[2] else [shared, ("the download default ./data", DEFAULT_DOWNLOAD_DIR, True)]


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data root following the resolution order in the module docstring."""
    return root_resolution(explicit)[-1][1]


def pusht_zarr_path(explicit_root: str | os.PathLike | None = None) -> Path:
    """Path of the Push-T replay buffer under the data root (it may not exist yet)."""
    return data_root(explicit_root) / PUSHT_ZARR_RELPATH


def download_command(root: str | os.PathLike | None = None) -> str:
    """The command that fetches Push-T into ``root`` (the one a rerun must repeat, ``--root`` included)."""
    return "python -m dpstack.datasets.download pusht" + (f" --root {root}" if root is not None else "")


def missing_pusht_message(explicit_root: str | os.PathLike | None = None,
                          store: str | os.PathLike | None = None) -> str:
    """Every place the Push-T store was looked for, and how to provide it.

    ``explicit_root`` is the config's ``data_root``; ``store`` a store path the caller named itself (then
    that path is the only place looked at).
    """
    if store is not None:
        looked, root = [f"  - {Path(store).absolute()} (the path given): not found"], None
    else:
        resolution = root_resolution(explicit_root)
        looked = [f"  - {origin}: {(path / PUSHT_ZARR_RELPATH).absolute()}: "
                  + ("not found" if used else "no such folder") for origin, path, used in resolution]
        if resolution[0][0] != "the shared development folder":
            looked.append("    (an explicit setting is used alone: ../shared/data and ./data are not consulted)")
        root = resolution[-1][1]
    return (
        "Push-T demonstrations not found. Looked in:\n" + "\n".join(looked) + "\n"
        f"Fix: point the environment variable {DATA_DIR_ENV} (or the config key 'data_root') at the folder "
        f"that holds {PUSHT_ZARR_RELPATH.as_posix()}, or download the official copy with\n"
        f"    {download_command(root)}"
    )
