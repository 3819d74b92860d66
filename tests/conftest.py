"""Test-wide settings: headless pygame, loopback-only ROS 2 discovery, the shared data fallback."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import pytest  # noqa: E402
import torch  # noqa: E402

# Small tensors: one intra-op thread is as fast and never oversubscribes a busy machine.
torch.set_num_threads(1)

from datasets.paths import pusht_zarr_path  # noqa: E402


@pytest.fixture(scope="session")
def pusht_zarr():
    """Path of the original Push-T demonstrations; skips where the data folder is absent."""
    path = pusht_zarr_path()
    if not path.exists():
        pytest.skip(f"Push-T data not found at {path} (set DP_DATA_DIR or run `python -m datasets.download pusht`)")
    return path


@pytest.fixture(scope="session")
def pusht_arrays(pusht_zarr):
    """The demonstrations' low-dim arrays, loaded once per test session."""
    import zarr

    group = zarr.open_group(str(pusht_zarr), mode="r")
    return {
        "state": group["data/state"][:],
        "action": group["data/action"][:],
        "keypoint": group["data/keypoint"][:],
        "episode_ends": group["meta/episode_ends"][:],
        "img": group["data/img"],
    }
