"""Push-T low-dim and image datasets on the original demonstrations."""
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from dpstack.datasets.paths import pusht_zarr_path
from dpstack.datasets.pusht import (
    PushTImageDataset,
    PushTLowdimDataset,
    goal_aligned_demonstrations,
    make_dataloader,
    mirrored_image_steps,
)
from dpstack.envs import PushTEnv
from dpstack.envs.geometry import GOAL_POSE, block_keypoints, mirror_points, mirror_poses, mirror_states

PUSHT = pusht_zarr_path()
pytestmark = pytest.mark.skipif(not PUSHT.exists(), reason=f"Push-T data not found at {PUSHT} (set DP_DATA_DIR)")


@pytest.fixture(scope="module")
def raw():
    group = zarr.open_group(PUSHT, mode="r")
    return {key: group[f"data/{key}"] for key in ("keypoint", "state", "action", "img")}


@pytest.fixture(scope="module")
def lowdim():
    return PushTLowdimDataset()


@pytest.fixture(scope="module")
def image():
    return PushTImageDataset(PUSHT)


def expected_steps(dataset, index):
    return dataset.sampler.step_indices([index])[0]


def test_lowdim_items_hold_keypoints_agent_pos_and_action(lowdim, raw):
    assert len(lowdim) == 10726
    index = 1234
    item = lowdim[index]
    assert item["obs"].shape == (16, 20) and item["action"].shape == (16, 2)
    assert item["obs"].dtype == item["action"].dtype == torch.float32
    steps = expected_steps(lowdim, index)
    keypoints = raw["keypoint"][steps.min():steps.max() + 1][steps - steps.min()].reshape(16, 18)
    agent_pos = raw["state"][steps.min():steps.max() + 1][steps - steps.min(), :2]
    np.testing.assert_array_equal(item["obs"].numpy(), np.concatenate([keypoints, agent_pos], axis=1))
    np.testing.assert_array_equal(item["action"].numpy(), raw["action"][steps.min():steps.max() + 1][steps - steps.min()])


def test_first_window_is_padded_with_first_frame(lowdim):
    first = lowdim[0]["action"]
    torch.testing.assert_close(first[0], first[1])


def test_batched_indexing_equals_single_items(lowdim):
    ids = [0, 5, 10725, -1]
    batch = lowdim[ids]
    assert batch["obs"].shape == (4, 16, 20)
    for row, index in enumerate(ids):
        torch.testing.assert_close(batch["obs"][row], lowdim[index]["obs"])
    with pytest.raises(IndexError):
        lowdim[len(lowdim)]


def test_validation_dataset_uses_only_held_out_episodes(lowdim):
    validation = lowdim.get_validation_dataset()
    assert len(validation) > 0 and len(lowdim) == 10726
    lengths = np.diff(lowdim.episode_ends, prepend=0)
    keep = lowdim.val_mask
    assert len(validation) == int((lengths[keep] - 16 + 1 + 7 + 1).sum())
    episode_of_step = np.searchsorted(lowdim.episode_ends, validation.sampler.windows[:, 1], side="right")
    assert keep[episode_of_step].all() and not lowdim.train_mask[episode_of_step].any()


def test_goal_aligned_dataset_ends_every_moved_demonstration_on_the_goal(lowdim, raw):
    aligned = PushTLowdimDataset(align_to_goal=True)
    both = PushTLowdimDataset(align_to_goal=True, mirror=True)
    assert len(aligned) == len(lowdim) and aligned.aligned_episodes.sum() == 181
    np.testing.assert_array_equal(aligned.train_mask, lowdim.train_mask)
    final_obs = aligned.arrays["obs"][aligned.episode_ends - 1]
    goal_keypoints = block_keypoints(GOAL_POSE).ravel()
    np.testing.assert_allclose(final_obs[aligned.aligned_episodes, :18],
                               np.tile(goal_keypoints, (181, 1)), atol=1e-3)
    recorded = np.repeat(~aligned.aligned_episodes, np.diff(aligned.episode_ends, prepend=0))
    for key in ("obs", "action"):
        np.testing.assert_array_equal(aligned.arrays[key][recorded], lowdim.arrays[key][recorded])
    state, action, _ = goal_aligned_demonstrations(raw["state"][:], raw["action"][:], aligned.episode_ends)
    np.testing.assert_allclose(aligned.arrays["obs"][~recorded, 18:], state[~recorded, :2], atol=1e-3)
    np.testing.assert_allclose(aligned.arrays["action"][~recorded], action[~recorded], atol=1e-3)
    assert np.abs(aligned.arrays["action"][~recorded] - lowdim.arrays["action"][~recorded]).mean() > 1.0
    n_steps = len(aligned.arrays["obs"])
    np.testing.assert_array_equal(both.arrays["obs"][:n_steps], aligned.arrays["obs"])
    mirrored_final = both.arrays["obs"][n_steps + aligned.episode_ends - 1]  # the goal is its own mirror image
    np.testing.assert_allclose(mirrored_final[aligned.aligned_episodes, :18], np.tile(goal_keypoints, (181, 1)),
                               atol=1e-3)


def test_mirror_appends_every_demonstration_reflected(lowdim, raw):
    mirrored = PushTLowdimDataset(mirror=True)
    n_steps, n_episodes = len(lowdim.arrays["obs"]), len(lowdim.episode_ends)
    assert len(mirrored) == 2 * len(lowdim) and len(mirrored.episode_ends) == 2 * n_episodes
    np.testing.assert_array_equal(mirrored.episode_ends[n_episodes:], lowdim.episode_ends + n_steps)
    np.testing.assert_array_equal(mirrored.train_mask, np.tile(lowdim.train_mask, 2))
    np.testing.assert_array_equal(mirrored.val_mask, np.tile(lowdim.val_mask, 2))
    np.testing.assert_array_equal(mirrored.arrays["obs"][:n_steps], lowdim.arrays["obs"])
    step = 4321
    state = raw["state"][step].astype(np.float64)
    expected = np.concatenate([block_keypoints(mirror_poses(state[2:5])).ravel(), mirror_points(state[:2])])
    np.testing.assert_allclose(mirrored.arrays["obs"][n_steps + step], expected, atol=1e-3)
    np.testing.assert_allclose(mirrored.arrays["action"][n_steps + step], mirror_points(raw["action"][step]))
    assert len(mirrored.get_validation_dataset()) == 2 * len(lowdim.get_validation_dataset())


def test_lowdim_normalizer_fits_all_episodes(lowdim):
    normalizer = lowdim.get_normalizer()
    assert sorted(normalizer.keys()) == ["action", "obs"]
    obs = normalizer["obs"].normalize(torch.from_numpy(lowdim.arrays["obs"]))
    torch.testing.assert_close(obs.min(0).values, -torch.ones(20))
    torch.testing.assert_close(obs.max(0).values, torch.ones(20))
    assert sorted(lowdim.get_normalizer("gaussian").keys()) == ["action", "obs"]


def test_dataloaders_deliver_same_batches(lowdim):
    order = torch.Generator().manual_seed(0)
    fast = next(iter(make_dataloader(lowdim, 8, shuffle=False)))
    plain = next(iter(DataLoader(lowdim, batch_size=8, shuffle=False)))
    for key in ("obs", "action"):
        torch.testing.assert_close(fast[key], plain[key])
    workers = make_dataloader(lowdim, 256, shuffle=True, num_workers=2, drop_last=True, generator=order)
    batches = [batch["obs"].shape for _, batch in zip(range(3), workers)]
    assert batches == [(256, 16, 20)] * 3 and len(workers) == len(lowdim) // 256


def test_image_items_are_float_chw_in_unit_range(image, raw):
    assert len(image) == 10726
    item = image[777]
    assert item["obs"]["image"].shape == (16, 3, 96, 96) and item["obs"]["image"].dtype == torch.float32
    assert item["obs"]["agent_pos"].shape == (16, 2) and item["action"].shape == (16, 2)
    steps = expected_steps(image, 777)
    frames = raw["img"][steps.min():steps.max() + 1][steps - steps.min()]
    expected = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(item["obs"]["image"], expected, atol=1e-6, rtol=0)


def test_image_loader_and_normalizer(image):
    batch = next(iter(make_dataloader(image, 64, shuffle=True)))
    assert batch["obs"]["image"].shape == (64, 16, 3, 96, 96) and batch["obs"]["image"].is_contiguous()
    assert 0.0 <= batch["obs"]["image"].min() and batch["obs"]["image"].max() <= 1.0
    normalizer = image.get_normalizer()
    assert sorted(normalizer.keys()) == ["action", "agent_pos", "image"]
    normalized = normalizer.normalize(batch["obs"])
    assert normalized["image"].min() >= -1.0 and normalized["image"].max() <= 1.0
    assert normalized["agent_pos"].abs().max() <= 1.0 + 1e-6


def test_image_dataset_can_gather_only_the_observed_steps(image):
    observed = PushTImageDataset(PUSHT, n_obs_steps=2)
    ids = np.array([0, 777, len(image) - 1])
    full, short = image.batch(ids), observed.batch(ids)
    assert short["obs"]["image"].shape == (3, 2, 3, 96, 96) and short["obs"]["agent_pos"].shape == (3, 2, 2)
    torch.testing.assert_close(short["obs"]["image"], full["obs"]["image"][:, :2], rtol=0, atol=0)
    torch.testing.assert_close(short["obs"]["agent_pos"], full["obs"]["agent_pos"][:, :2], rtol=0, atol=0)
    torch.testing.assert_close(short["action"], full["action"], rtol=0, atol=0)  # actions keep the horizon
    assert len(observed.get_validation_dataset()[0]["obs"]["image"]) == 2


def test_mirrored_images_are_renders_of_the_mirrored_states(raw):
    """The anti-transposed recorded image is what the simulator draws for the reflected state, to within the
    1 canvas pixel between the pixel grid's axis (x + y = 511) and the state's (512) and the rasterisation
    of the goal and walls (measured on these ten frames: mean absolute error 0.53 of 255 at the median, 0.61
    at most; the plain transpose: 8.6)."""
    frames = np.arange(0, 25650, 2565)
    images = np.stack([raw["img"][f] for f in frames]).astype(np.uint8).transpose(0, 3, 1, 2)
    state, action = raw["state"][frames].astype(np.float64), raw["action"][frames]
    mirrored = mirrored_image_steps(images, state, action)
    np.testing.assert_allclose(mirrored["action"], mirror_points(action), rtol=1e-6)
    np.testing.assert_allclose(mirrored["agent_pos"], mirror_states(state)[:, :2], rtol=1e-6)
    env = PushTEnv(obs_type="image")
    errors, transposed_errors = [], []
    for row in range(len(frames)):
        rendered = env.reset(options={"reset_to_state": mirror_states(state[row])})[0]["image"] * 255.0
        errors.append(np.abs(rendered - mirrored["image"][row]).mean())
        transposed_errors.append(np.abs(rendered - images[row].transpose(0, 2, 1)).mean())
    assert np.median(errors) <= 0.6 and max(errors) <= 1.0
    # The reflection across x = y instead (a plain transpose) is far off.
    assert np.median(transposed_errors) > 3 * np.median(errors)


def test_keypoint_targets_are_the_block_keypoints_of_each_observed_step(raw):
    """Targets of the training-only keypoint loss: the 9 keypoints of the recorded block pose at each observed
    step, and of the reflected pose in the mirrored copy; the normalizer covers them."""
    dataset = PushTImageDataset(PUSHT, n_obs_steps=2, mirror=True, keypoint_targets=True)
    n_recorded = raw["state"].shape[0]
    ids = np.array([0, 777, len(dataset) // 2 + 777, len(dataset) - 1])
    batch = dataset.batch(ids)
    assert batch["aux_keypoints"].shape == (4, 2, 18) and batch["obs"]["image"].shape == (4, 2, 3, 96, 96)
    for row, window in enumerate(ids):
        for step, index in enumerate(expected_steps(dataset, window)[:2]):
            recorded = index < n_recorded
            state = raw["state"][index if recorded else index - n_recorded].astype(np.float64)
            pose = state[2:5] if recorded else mirror_states(state)[2:5]
            np.testing.assert_allclose(batch["aux_keypoints"][row, step].numpy(),
                                       block_keypoints(pose).reshape(-1), atol=1e-3)
    assert "aux_keypoints" in dataset.get_normalizer().keys()
    assert "aux_keypoints" not in PushTImageDataset(PUSHT, n_obs_steps=2).batch(ids[:1])
