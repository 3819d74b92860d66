"""Test-wide settings (headless pygame, loopback-only ROS 2 discovery, the shared data fallback) and
shared fixtures: the demonstrations, the ROS 2 ones (colcon ``install``, test-side ``ros`` node,
``processes``) and a tiny trained ``checkpoint``."""
import os
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import pytest  # noqa: E402
import torch  # noqa: E402

# Small tensors: one intra-op thread is as fast and never oversubscribes a busy machine.
torch.set_num_threads(1)

from dpstack.datasets.paths import data_root, pusht_zarr_path  # noqa: E402


@pytest.fixture(scope="session")
def pusht_zarr():
    """Path of the original Push-T demonstrations; skips where the data folder is absent."""
    path = pusht_zarr_path()
    if not path.exists():
        pytest.skip(f"Push-T data not found at {path} (set DP_DATA_DIR or run `python -m dpstack.datasets.download pusht`)")
    return path


@pytest.fixture(scope="session")
def mnist_data():
    """The MNIST folder (test split at least); skips where the data folder is absent."""
    folder = data_root() / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").exists() and not (folder / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST not found at {folder} (set DP_DATA_DIR or run `python -m dpstack.datasets.download mnist`)")
    return folder


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


@pytest.fixture(scope="session")
def install(tmp_path_factory):
    """``colcon build`` of real_robot into a temporary folder, once per session; returns the install prefix."""
    import shutil
    import subprocess
    import sys

    from ros_harness import PACKAGE

    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon not installed (pip install colcon-common-extensions catkin-pkg)")
    root = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run([colcon, "--log-base", str(root / "log"), "build", "--base-paths", str(PACKAGE),
                             "--build-base", str(root / "build"), "--install-base", str(root / "install")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "install" / "real_robot"


@pytest.fixture
def processes():
    """Node processes started by a test, interrupted (then killed) when it ends."""
    from ros_harness import Processes

    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def ros():
    """An rclpy node for the test side (publishers, fake controller), spun in a thread."""
    import threading

    import rclpy
    import ros_harness  # noqa: F401  (pins ROS_DOMAIN_ID before rclpy.init)
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("ros_test_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, pusht_zarr):
    """A tiny trained low-dim checkpoint (one epoch, as tests/test_training.py trains them)."""
    from test_training import tiny_config
    from dpstack.training.workspace import TrainingWorkspace

    run = tmp_path_factory.mktemp("tiny_run")
    TrainingWorkspace(tiny_config("training.num_epochs=1", "training.rollout_every=100",
                                  "eval.n_test_videos=0"), run).run()
    return run / "checkpoints" / "latest.ckpt"
