"""Window index, edge padding and the train/validation split."""
import numpy as np
import pytest

from dpstack.datasets.paths import pusht_zarr_path
from dpstack.datasets.replay_buffer import ReplayBuffer
from dpstack.datasets.sampler import SequenceSampler, build_window_index, cap_episodes, train_validation_masks, validation_mask

PUSHT = pusht_zarr_path()
needs_pusht = pytest.mark.skipif(not PUSHT.exists(), reason=f"Push-T data not found at {PUSHT} (set DP_DATA_DIR)")


def reference_windows(episode_ends, mask, horizon, pad_before, pad_after):
    """Windows written out frame by frame from the reference semantics."""
    windows, start = [], 0
    for keep, end in zip(mask, episode_ends):
        if keep:
            for offset in range(-pad_before, end - start - horizon + pad_after + 1):
                windows.append([min(max(start + offset + t, start), end - 1) for t in range(horizon)])
        start = end
    return np.array(windows, dtype=np.int64).reshape(-1, horizon)


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(1, 0, 0), (4, 1, 2), (6, 0, 0), (16, 1, 7), (9, 5, 5)])
def test_windows_match_reference_semantics(horizon, pad_before, pad_after):
    episode_ends = np.cumsum([3, 8, 1, 12, 5])
    mask = np.array([True, True, True, False, True])
    sampler = SequenceSampler({"t": np.arange(episode_ends[-1])}, episode_ends, horizon, pad_before, pad_after, mask)
    expected = reference_windows(episode_ends, mask, horizon, pad_before, pad_after)
    assert len(sampler) == len(expected)
    np.testing.assert_array_equal(sampler.sample(np.arange(len(sampler)))["t"], expected)


def test_window_count_per_episode_and_padding_repeats_edges():
    data = np.arange(10, dtype=np.float32)[:, None] * np.ones(3, np.float32)
    sampler = SequenceSampler({"x": data}, np.array([10]), horizon=4, pad_before=2, pad_after=3)
    assert len(sampler) == 10 - 4 + 2 + 3 + 1
    first, last = sampler.sample([0, len(sampler) - 1])["x"]
    np.testing.assert_array_equal(first[:, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(last[:, 0], [9, 9, 9, 9])  # starts at L - horizon + pad_after
    assert sampler.sample([0])["x"].shape == (1, 4, 3)


def test_short_episode_without_padding_yields_no_window():
    windows = build_window_index(np.array([2, 10]), np.array([True, True]), 5, 0, 0)
    np.testing.assert_array_equal(windows[:, 1:], [[2, 10]] * 4)


def test_lazy_zarr_arrays_sample_like_numpy(tmp_path):
    buffer = ReplayBuffer.create(tmp_path / "s.zarr")
    for length in (4, 9, 2):
        buffer.add_episode({"x": np.random.default_rng(length).normal(size=(length, 3)).astype(np.float32)})
    in_memory = ReplayBuffer.load(tmp_path / "s.zarr")
    ids = np.arange(10)
    lazy = SequenceSampler({"x": buffer["x"]}, buffer.episode_ends, 5, 2, 3).sample(ids)["x"]
    eager = SequenceSampler({"x": in_memory["x"]}, in_memory.episode_ends, 5, 2, 3).sample(ids)["x"]
    np.testing.assert_array_equal(lazy, eager)


def test_validation_mask_follows_reference_algorithm():
    mask = validation_mask(206, 0.02, 42)
    expected = np.zeros(206, bool)
    expected[np.random.default_rng(42).choice(206, size=4, replace=False)] = True
    np.testing.assert_array_equal(mask, expected)
    assert not validation_mask(10, 0.0, 0).any()
    assert validation_mask(3, 0.9, 0).sum() == 2  # at most n - 1
    assert validation_mask(100, 0.001, 0).sum() == 1  # at least 1


def test_training_cap_draws_from_ascending_remaining_indices():
    mask = np.zeros(20, bool)
    mask[[1, 3, 4, 8, 9, 15, 19]] = True
    capped = cap_episodes(mask, 3, seed=7)
    picks = np.random.default_rng(7).choice(7, size=3, replace=False)
    np.testing.assert_array_equal(np.nonzero(capped)[0], np.sort(np.array([1, 3, 4, 8, 9, 15, 19])[picks]))
    np.testing.assert_array_equal(cap_episodes(mask, 10, seed=7), mask)
    np.testing.assert_array_equal(cap_episodes(mask, None, seed=7), mask)


def test_validation_is_complement_of_capped_training():
    train, val = train_validation_masks(206, 0.02, 42, 90)
    assert train.sum() == 90 and val.sum() == 116 and not (train & val).any()


@needs_pusht
def test_pusht_reference_split_gives_10726_training_windows():
    buffer = ReplayBuffer.open(PUSHT, keys=["action"])
    assert validation_mask(buffer.n_episodes, 0.02, 42).sum() == 4
    train, _ = train_validation_masks(buffer.n_episodes, 0.02, 42, 90)
    sampler = SequenceSampler({"action": buffer["action"]}, buffer.episode_ends, 16, 1, 7, train)
    assert len(sampler) == 10726
