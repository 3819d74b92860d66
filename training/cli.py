"""What the entry points do with a user's mistake (missing data, a missing or corrupt checkpoint, a bad
config): one message on stderr, exit status 2, no traceback, and no empty run folder left behind."""
from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from dpstack.datasets.download import DownloadError
from dpstack.datasets.paths import DataNotFoundError
from dpstack.policy.checkpoint import CheckpointError
from dpstack.training.config import ConfigError
from dpstack.training.workspace import TrainingDivergedError

USER_ERRORS = (ConfigError, CheckpointError, DataNotFoundError, DownloadError, TrainingDivergedError)
USER_ERROR_EXIT_STATUS = 2
# What a run folder holds before any work was done: hydra's record of the config and its job log.
STARTUP_ONLY = {".hydra", "train.log"}


def remove_if_unused(run_dir: Path) -> None:
    """Delete ``run_dir`` when it holds nothing but what a start writes, then the folders above it that
    this leaves empty, up to the working directory (hydra made them: ``data/outputs/<date>``)."""
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir() or not {entry.name for entry in run_dir.iterdir()} <= STARTUP_ONLY:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().absolute()
    for parent in run_dir.parents:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


@contextmanager
def exit_on_user_error(run_dir: Path | None = None, also: tuple[type[Exception], ...] = ()):
    """Turn a ``USER_ERRORS`` exception (or one of ``also``) into ``error: <message>`` and ``SystemExit(2)``."""
    try:
        yield
    except USER_ERRORS + also as error:
        if run_dir is not None:
            remove_if_unused(run_dir)
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None
