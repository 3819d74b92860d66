"""ReplayBuffer: opening the original store, creating new ones, crash safety and validation."""
import numpy as np
import pytest
import zarr

from dpstack.datasets.paths import pusht_zarr_path
from dpstack.datasets.replay_buffer import ReplayBuffer, ReplayBufferError

PUSHT = pusht_zarr_path()
needs_pusht = pytest.mark.skipif(not PUSHT.exists(), reason=f"Push-T data not found at {PUSHT} (set DP_DATA_DIR)")


def make_episode(length: int, start: float = 0.0) -> dict:
    steps = np.arange(length, dtype=np.float32) + start
    return {"action": np.stack([steps, -steps], axis=1),
            "img": np.full((length, 4, 4, 3), int(start) % 256, dtype=np.uint8)}


@needs_pusht
def test_lazy_open_of_original_store_matches_known_layout():
    buffer = ReplayBuffer.open(PUSHT)
    assert buffer.backend == "zarr"
    assert (buffer.n_episodes, buffer.n_steps) == (206, 25650)
    assert sorted(buffer.keys()) == ["action", "img", "keypoint", "n_contacts", "state"]
    assert buffer.episode_lengths.sum() == 25650 and buffer.episode_lengths[0] == buffer.episode_ends[0] == 161
    episode = buffer.get_episode(1)
    assert episode["img"].shape == (118, 96, 96, 3) and episode["keypoint"].shape == (118, 9, 2)
    np.testing.assert_array_equal(episode["action"], buffer["action"][161:279])


@needs_pusht
def test_load_into_memory_casts_images_exactly():
    memory = ReplayBuffer.load(PUSHT, keys=["img", "action"], dtypes={"img": np.uint8})
    assert memory.backend == "numpy" and memory.keys() == ["img", "action"]
    assert memory["img"].dtype == np.uint8 and memory["img"].shape == (25650, 96, 96, 3)
    original = zarr.open_group(PUSHT, mode="r")["data/img"][25000:25010]
    np.testing.assert_array_equal(memory["img"][25000:25010], original.astype(np.uint8))
    np.testing.assert_array_equal(memory.get_episode(-1)["action"], memory["action"][-len(memory.get_episode(-1)["action"]):])


@needs_pusht
def test_requesting_missing_key_names_it_and_available_keys():
    with pytest.raises(ReplayBufferError, match=r"missing key\(s\) \['wrist_cam'\].*available"):
        ReplayBuffer.open(PUSHT, keys=["action", "wrist_cam"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_create_add_and_reopen_round_trip(tmp_path, zarr_format):
    path = tmp_path / "teleop.zarr"
    buffer = ReplayBuffer.create(path, zarr_format=zarr_format)
    episodes = [make_episode(5, 0), make_episode(3, 100), make_episode(7, 200)]
    for episode in episodes:
        buffer.add_episode(episode)
    assert buffer.n_episodes == 3 and buffer.n_steps == 15
    reopened = ReplayBuffer.open(path)
    assert zarr.open_group(path, mode="r").metadata.zarr_format == zarr_format
    np.testing.assert_array_equal(reopened.episode_ends, [5, 8, 15])
    for index, episode in enumerate(episodes):
        for key, value in episode.items():
            np.testing.assert_array_equal(reopened.get_episode(index)[key], value)
    appender = ReplayBuffer.open(path, mode="a")
    appender.add_episode(make_episode(2, 300))
    assert ReplayBuffer.load(path).episode_lengths.tolist() == [5, 3, 7, 2]


def test_create_refuses_to_overwrite_and_read_only_refuses_writes(tmp_path):
    path = tmp_path / "store.zarr"
    ReplayBuffer.create(path).add_episode(make_episode(2))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ReplayBuffer.create(path)
    with pytest.raises(PermissionError, match="mode='a'"):
        ReplayBuffer.open(path).add_episode(make_episode(2))


def test_in_memory_buffer_grows_and_checks_episodes():
    buffer = ReplayBuffer.empty()
    for index in range(20):
        buffer.add_episode(make_episode(index + 1, index))
    assert buffer.n_steps == sum(range(1, 21)) and len(buffer["action"]) == buffer.n_steps
    np.testing.assert_array_equal(buffer.get_episode(19)["action"][:, 0], np.arange(20) + 19)
    with pytest.raises(ValueError, match="share a non-zero first dimension"):
        buffer.add_episode({"action": np.zeros((3, 2)), "img": np.zeros((4, 4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match="differ from the buffer's keys"):
        buffer.add_episode({"action": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="step shape"):
        buffer.add_episode({"action": np.zeros((3, 3)), "img": np.zeros((3, 4, 4, 3), np.uint8)})


def test_interrupted_data_write_is_ignored_then_overwritten(tmp_path):
    path = tmp_path / "store.zarr"
    buffer = ReplayBuffer.create(path)
    buffer.add_episode(make_episode(4, 0))
    # Crash after the step arrays were appended but before episode_ends was committed.
    data = zarr.open_group(path, mode="r+")["data"]
    for key, value in make_episode(6, 50).items():
        data[key].resize((10,) + value.shape[1:])
        data[key][4:10] = value
    survivor = ReplayBuffer.open(path, mode="a")
    assert survivor.n_steps == 4 and survivor.n_episodes == 1
    survivor.add_episode(make_episode(2, 70))
    reopened = ReplayBuffer.load(path)
    np.testing.assert_array_equal(reopened.episode_ends, [4, 6])
    np.testing.assert_array_equal(reopened.get_episode(1)["action"][:, 0], [70, 71])
    assert zarr.open_group(path, mode="r")["data/action"].shape[0] == 6


def test_interrupted_commit_of_episode_ends_is_ignored(tmp_path):
    path = tmp_path / "store.zarr"
    ReplayBuffer.create(path).add_episode(make_episode(3))
    zarr.open_group(path, mode="r+")["meta/episode_ends"].resize((2,))  # resized, value never written
    buffer = ReplayBuffer.open(path, mode="a")
    assert buffer.n_episodes == 1
    buffer.add_episode(make_episode(2, 10))
    np.testing.assert_array_equal(ReplayBuffer.open(path).episode_ends, [3, 5])


def test_truncated_array_is_rejected_with_fix(tmp_path):
    path = tmp_path / "store.zarr"
    ReplayBuffer.create(path).add_episode(make_episode(5))
    zarr.open_group(path, mode="r+")["data/action"].resize((3, 2))
    with pytest.raises(ReplayBufferError, match=r"data/action has 3 steps but meta/episode_ends\[-1\] is 5.*regenerate"):
        ReplayBuffer.open(path)


def test_non_monotonic_episode_ends_is_rejected(tmp_path):
    path = tmp_path / "store.zarr"
    buffer = ReplayBuffer.create(path)
    buffer.add_episode(make_episode(5))
    buffer.add_episode(make_episode(5))
    zarr.open_group(path, mode="r+")["meta/episode_ends"][:] = [5, 4]
    with pytest.raises(ReplayBufferError, match="not strictly increasing at index 1"):
        ReplayBuffer.open(path)


def test_group_without_layout_is_rejected(tmp_path):
    zarr.open_group(tmp_path / "plain.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(ReplayBufferError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "plain.zarr")
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.open(tmp_path / "absent.zarr")
