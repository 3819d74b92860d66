"""Self-imitation data: recorded rollouts replay in the simulator, only successes are stored, the dataset
trains on them beside the demonstrations, and a fine-tune starts from a checkpoint's weights and normalizer."""
import dataclasses

import numpy as np
import pytest
import torch

from dpstack.datasets.pusht import PushTLowdimDataset, lowdim_steps, mirrored_lowdim_steps
from dpstack.datasets.replay_buffer import ReplayBuffer
from dpstack.datasets.rollouts import collect_rollouts, main as rollouts_main, write_rollouts
from dpstack.envs import PushTEnv
from dpstack.envs.geometry import block_keypoints_batch
from dpstack.policy.checkpoint import load_policy
from dpstack.training.config import ConfigError
from dpstack.training.recipes import PolicyRecipe

SEEDS = [3000000, 3000001, 3000002]


@pytest.fixture(scope="module")
def rollouts(checkpoint):
    return collect_rollouts(load_policy(checkpoint), SEEDS, max_steps=25, batch_size=2, progress=False)


def test_recorded_rollouts_replay_exactly_in_the_simulator(rollouts):
    assert [r.seed for r in rollouts] == SEEDS
    for rollout in rollouts:
        assert rollout.states.shape == (25, 5) and rollout.actions.shape == (25, 2)
        env = PushTEnv(obs_type="state")
        env.reset(seed=rollout.seed)
        for state, action in zip(rollout.states, rollout.actions):
            np.testing.assert_array_equal(env.physics.state, state)  # the state seen before the action
            env.step(action)


def test_only_successful_rollouts_are_written(rollouts, tmp_path):
    won = dataclasses.replace(rollouts[1], success=True)
    store = tmp_path / "r.zarr"
    assert write_rollouts([rollouts[0], won, rollouts[2]], store, {"checkpoint": "x"}) == 1
    buffer = ReplayBuffer.load(store)
    assert buffer.n_episodes == 1 and not (tmp_path / "r.zarr.partial").exists()
    np.testing.assert_allclose(buffer["state"], won.states, rtol=1e-6)
    np.testing.assert_allclose(buffer["action"], won.actions, rtol=1e-6)
    np.testing.assert_allclose(buffer["keypoint"], block_keypoints_batch(won.states[:, 2:5]), rtol=1e-5)
    import zarr

    attributes = zarr.open_group(store, mode="r").attrs
    assert attributes["seeds"] == SEEDS and attributes["kept_seeds"] == [SEEDS[1]]
    with pytest.raises(ValueError, match="none of the 3 rollouts succeeded"):
        write_rollouts([dataclasses.replace(r, success=False) for r in rollouts], tmp_path / "none.zarr")


def test_rollout_cli_refuses_the_test_seeds(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="overlap the test seeds"):
        rollouts_main([str(checkpoint), str(tmp_path / "r.zarr"), "--start-seed", "100400"])


@pytest.fixture(scope="module")
def extra_store(rollouts, tmp_path_factory):
    store = tmp_path_factory.mktemp("extra") / "r.zarr"
    write_rollouts([dataclasses.replace(r, success=True) for r in rollouts[:2]], store)
    return store


def test_extra_episodes_train_beside_the_demonstrations(pusht_zarr, rollouts, extra_store):
    base = PushTLowdimDataset(max_train_episodes=None, align_to_goal=True)
    more = PushTLowdimDataset(max_train_episodes=None, align_to_goal=True, extra_stores=[extra_store])
    n = len(base.episode_ends)
    assert len(more.episode_ends) == n + 2
    np.testing.assert_array_equal(more.train_mask[:n], base.train_mask)
    np.testing.assert_array_equal(more.val_mask, np.concatenate([base.val_mask, [False, False]]))
    assert more.train_mask[n:].all() and len(more) > len(base)
    first = slice(more.episode_ends[n - 1], more.episode_ends[n])  # as recorded: not goal-aligned
    expected = lowdim_steps(rollouts[0].states.astype(np.float32), rollouts[0].actions.astype(np.float32))
    np.testing.assert_allclose(more.arrays["obs"][first], expected["obs"], atol=1e-4)
    mirrored = PushTLowdimDataset(max_train_episodes=None, mirror=True, extra_stores=[extra_store])
    assert len(mirrored.episode_ends) == 2 * (n + 2) and mirrored.train_mask[-2:].all()
    flipped = mirrored_lowdim_steps(rollouts[1].states.astype(np.float32), rollouts[1].actions.astype(np.float32))
    np.testing.assert_allclose(mirrored.arrays["action"][-len(rollouts[1].actions):], flipped["action"], atol=1e-4)


def test_a_fine_tune_starts_from_the_checkpoint_and_checks_its_inputs(checkpoint, extra_store, tmp_path):
    from test_training import tiny_config

    cfg = tiny_config(f"training.init_checkpoint={checkpoint}", f"task.dataset.extra_stores=[{extra_store}]")
    recipe = PolicyRecipe(cfg)
    dataset, _ = recipe.build_data()
    model = recipe.build_model(dataset)
    for key, value in load_policy(checkpoint).state_dict().items():  # weights and normalizer alike
        torch.testing.assert_close(model.state_dict()[key], value)
    with pytest.raises(ValueError, match="init_checkpoint.*another shape"):
        PolicyRecipe(tiny_config(f"training.init_checkpoint={checkpoint}", "policy.down_dims=[8,16,32]")
                     ).build_model(dataset)
    with pytest.raises(ConfigError, match="init_checkpoint=.*does not exist"):
        tiny_config(f"training.init_checkpoint={tmp_path / 'no.ckpt'}")
    with pytest.raises(ConfigError, match="extra_stores: .*does not exist"):
        tiny_config(f"task.dataset.extra_stores=[{tmp_path / 'no.zarr'}]")
