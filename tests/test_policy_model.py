"""ConditionalUnet1D, the policy's loss and sampling, its config and the receding-horizon executor."""
import numpy as np
import pytest
import torch

from dpstack.datasets.normalizer import LinearNormalizer
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy
from dpstack.policy.executor import ObservationHistory, RecedingHorizonExecutor
from dpstack.policy.unet1d import ConditionalUnet1D, FiLMResidualBlock

TINY = dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=16, sampler="ddim", num_inference_steps=5)


def tiny_policy(**overrides):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit({"obs": rng.uniform(0, 512, (100, 20)).astype(np.float32),
                                         "action": rng.uniform(0, 512, (100, 2)).astype(np.float32)})
    return DiffusionUnetPolicy(DiffusionPolicyConfig(**(TINY | overrides)), normalizer)


def test_unet_keeps_shape_and_uses_condition():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=40, down_dims=(16, 32, 64), diffusion_step_embed_dim=16)
    x = torch.randn(3, 16, 2)
    cond = torch.randn(3, 40)
    out = net(x, torch.tensor([0, 5, 99]), cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, torch.tensor([0, 5, 99]), cond + 1.0))
    assert not torch.allclose(out, net(x, 50, cond))  # scalar timestep broadcasts
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 10, 2), 0, torch.randn(1, 40))


def test_one_block_per_level_halves_the_blocks_and_copies_the_first_ones():
    """blocks_per_level=1: 6 residual blocks instead of 12; ``init_from_deeper`` keeps the first block of each
    level and of the middle plus every resampling conv, so on the kept modules both nets compute the same."""
    deep = ConditionalUnet1D(action_dim=2, global_cond_dim=40, down_dims=(16, 32, 64), diffusion_step_embed_dim=16)
    shallow = ConditionalUnet1D(action_dim=2, global_cond_dim=40, down_dims=(16, 32, 64), diffusion_step_embed_dim=16,
                                blocks_per_level=1)
    assert "down.0.2.weight" in deep.state_dict() and "mid.1.first.0.weight" in deep.state_dict()  # old checkpoints' keys
    count = lambda net: sum(isinstance(m, FiLMResidualBlock) for m in net.modules())  # noqa: E731
    assert (count(deep), count(shallow)) == (12, 6)
    shallow.init_from_deeper(deep)
    x, cond = torch.randn(3, 16, 2), torch.randn(3, 40)
    assert torch.equal(shallow.down[1][1].weight, deep.down[1][2].weight)  # the downsampling conv
    block_input, film_cond = torch.randn(3, 128, 4), torch.randn(3, 16 + 40)  # [step embedding, global cond]
    assert torch.equal(shallow.up[0][0](block_input, film_cond), deep.up[0][0](block_input, film_cond))
    assert shallow(x, 5, cond).shape == x.shape
    with pytest.raises(ValueError, match="cannot initialise"):
        deep.init_from_deeper(shallow)
    with pytest.raises(ValueError, match="blocks_per_level"):
        DiffusionPolicyConfig(**(TINY | dict(blocks_per_level=0)))



def test_per_stage_block_counts_remove_chosen_blocks_and_match_the_teacher_with_them_skipped():
    """[2, 2, 1, 0, 2, 2] (down levels, middle, up levels): the deepest level's second block and both middle blocks
    removed. Block-removed from the full net, it computes exactly the full net with those blocks skipped."""
    kwargs = dict(action_dim=2, global_cond_dim=40, down_dims=(16, 32, 64), diffusion_step_embed_dim=16)
    deep = ConditionalUnet1D(**kwargs)
    pruned = ConditionalUnet1D(**kwargs, blocks_per_level=(2, 2, 1, 0, 2, 2))
    assert pruned.stage_block_counts() == ([2, 2, 1], 0, [2, 2]) and len(pruned.mid) == 0
    pruned.init_from_deeper(deep)

    class Skip(torch.nn.Module):
        def forward(self, x, cond):
            return x

    deep.down[2][1] = Skip()
    deep.mid = torch.nn.ModuleList([Skip(), Skip()])
    x, cond = torch.randn(3, 16, 2), torch.randn(3, 40)
    torch.testing.assert_close(pruned(x, torch.tensor([0, 40, 90]), cond), deep(x, torch.tensor([0, 40, 90]), cond))
    with pytest.raises(ValueError, match=r"cannot initialise blocks per stage \[2, 2, 2, 2, 2, 2\]"):
        ConditionalUnet1D(**kwargs).init_from_deeper(pruned)


@pytest.mark.parametrize("counts, problem", [((2, 2, 1, 0, 2), "an integer or 6 integers"),
                                             ((2, 0, 2, 2, 2, 2), "every down and up level needs ≥ 1 block"),
                                             ((2, 2, 2, -1, 2, 2), "the middle ≥ 0"),
                                             ("2", "an integer or 6 integers")])
def test_bad_block_counts_name_the_rule(counts, problem):
    with pytest.raises(ValueError, match=problem):
        DiffusionPolicyConfig(**(TINY | dict(blocks_per_level=counts)))


def test_per_stage_block_counts_survive_a_checkpoint(tmp_path):
    from dpstack.policy.checkpoint import load_policy, save_checkpoint

    policy = tiny_policy(blocks_per_level=[2, 2, 1, 0, 2, 2])  # a list, as YAML gives it
    assert policy.config.blocks_per_level == (2, 2, 1, 0, 2, 2)
    assert policy.config.to_dict()["blocks_per_level"] == [2, 2, 1, 0, 2, 2]
    save_checkpoint({"config": {"recipe": "policy"}, "policy_config": policy.config.to_dict(),
                     "state_dicts": {"model": policy.state_dict()}}, tmp_path / "pruned.ckpt")
    loaded = load_policy(tmp_path / "pruned.ckpt")
    assert loaded.config == policy.config and len(loaded.model.mid) == 0
    obs = {"obs": torch.rand(1, 2, 20) * 512}
    torch.manual_seed(1)
    expected = policy.eval().predict_action(obs)["action"]
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.eval().predict_action(obs)["action"], expected)

def test_paper_lowdim_unet_size():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=40, down_dims=(256, 512, 1024), diffusion_step_embed_dim=256)
    n_params = sum(p.numel() for p in net.parameters())
    assert 65e6 < n_params < 67e6  # the reference's low-dim UNet has 6.6e7 parameters


@pytest.mark.parametrize("bad, message", [
    (dict(sampler="euler"), "sampler"),
    (dict(num_inference_steps=500), "num_inference_steps"),
    (dict(n_action_steps=16), "exceeds horizon"),
    (dict(horizon=10), "multiple"),
    (dict(down_dims=(12, 24, 48)), "n_groups"),
    (dict(cond_noise_std=-0.1), "cond_noise_std"),
])
def test_config_validation_names_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        DiffusionPolicyConfig(**(TINY | bad))
    with pytest.raises(ValueError, match="unknown policy config keys"):
        DiffusionPolicyConfig.from_dict({"horizen": 16})


def test_loss_decreases_on_a_fixed_batch():
    policy = tiny_policy()
    generator = torch.Generator().manual_seed(0)
    batch = {"obs": torch.rand(32, 16, 20) * 512, "action": torch.rand(32, 16, 2) * 512}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        generator.manual_seed(0)  # same noise and timesteps every step: a fixed objective
        loss = policy.compute_loss(batch, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_condition_noise_perturbs_training_only():
    batch = {"obs": torch.rand(8, 16, 20) * 512, "action": torch.rand(8, 16, 2) * 512}
    plain, noisy = tiny_policy(), tiny_policy(cond_noise_std=0.5)
    loss = {name: p.compute_loss(batch, generator=torch.Generator().manual_seed(0)).item()
            for name, p in [("plain", plain), ("noisy", noisy)]}
    assert loss["plain"] != loss["noisy"]
    # σ = 0 draws nothing extra: the loss is the one of a policy without the option
    again = tiny_policy(cond_noise_std=0.0).compute_loss(batch, generator=torch.Generator().manual_seed(0)).item()
    assert again == loss["plain"]
    # sampling ignores it: same weights, same actions
    obs = {"obs": torch.rand(2, 2, 20) * 512}
    plain_actions, noisy_actions = (p.eval().predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
                                    for p in (plain, noisy))
    torch.testing.assert_close(plain_actions, noisy_actions)


def test_predict_action_shapes_slice_and_units():
    policy = tiny_policy().eval()
    out = policy.predict_action({"obs": torch.rand(4, 2, 20) * 512}, generator=torch.Generator().manual_seed(1))
    assert out["action_pred"].shape == (4, 16, 2) and out["action"].shape == (4, 8, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:9])
    # clip_sample keeps normalized actions in [-1, 1], i.e. inside the fitted action range
    low, high = policy.normalizer["action"].unnormalize(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.all(out["action_pred"] >= low - 1e-3) and torch.all(out["action_pred"] <= high + 1e-3)


def test_sampling_is_reproducible_with_a_generator():
    policy = tiny_policy().eval()
    obs = {"obs": torch.rand(2, 2, 20) * 512}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
    torch.testing.assert_close(a, b)


def test_normalizer_travels_in_the_state_dict():
    trained = tiny_policy()
    fresh = DiffusionUnetPolicy(DiffusionPolicyConfig(**TINY))
    fresh.load_state_dict(trained.state_dict())
    x = torch.rand(3, 20) * 512
    torch.testing.assert_close(fresh.normalizer.normalize({"obs": x})["obs"],
                               trained.normalizer.normalize({"obs": x})["obs"])


def test_reconfigure_inference_settings():
    policy = tiny_policy()
    policy.reconfigure(num_inference_steps=20, sampler="ddpm", n_action_steps=4)
    assert policy.config.sampler == "ddpm" and len(policy.inference_scheduler.timesteps) == 20
    assert policy.predict_action({"obs": torch.rand(1, 2, 20)})["action"].shape == (1, 4, 2)
    with pytest.raises(ValueError, match="can change after training"):
        policy.reconfigure(horizon=32)
    policy.reconfigure(sampler="ddim", num_inference_steps=2, ddim_steps_offset=40)  # DDIM-2 shifted up by 40
    assert policy.inference_scheduler.timesteps.tolist() == [90, 40]
    with pytest.raises(ValueError, match="first timestep at 106"):
        policy.reconfigure(num_inference_steps=3)


def test_observation_history_repeats_first_then_rolls():
    history = ObservationHistory(2)
    history.reset({"obs": np.array([[1.0]])})
    np.testing.assert_array_equal(history.stacked()["obs"], [[[1.0], [1.0]]])
    history.append({"obs": np.array([[2.0]])})
    history.append({"obs": np.array([[3.0]])})
    np.testing.assert_array_equal(history.stacked()["obs"], [[[2.0], [3.0]]])


def test_executor_replans_every_n_action_steps_and_drops_finished_episodes():
    calls = []

    def predict(stacked):
        calls.append(stacked["obs"].copy())
        batch = stacked["obs"].shape[0]
        return np.arange(8, dtype=float)[None, :, None].repeat(batch, 0).repeat(2, 2) + 10 * len(calls)

    executor = RecedingHorizonExecutor(predict, n_obs_steps=2, n_action_steps=8)
    executor.reset({"obs": np.zeros((3, 20))})
    actions = [executor.act(None)]
    for step in range(1, 12):
        actions.append(executor.act({"obs": np.full((3, 20), step)}))
    assert len(calls) == 2 and executor.chunks_predicted == 2
    np.testing.assert_array_equal(calls[0][:, :, 0], [[0, 0]] * 3)  # first obs repeated at reset
    np.testing.assert_array_equal(calls[1][:, :, 0], [[7, 8]] * 3)  # the two newest at replanning
    assert [a[0, 0] for a in actions[:9]] == [10, 11, 12, 13, 14, 15, 16, 17, 20]
    executor.select([0, 2])
    assert executor.act({"obs": np.full((2, 20), 12)}).shape == (2, 2)


def test_traced_policy_gives_identical_actions_for_any_batch():
    policy = tiny_policy().eval()
    for batch in (1, 5):
        obs = {"obs": torch.rand(batch, 2, 20) * 512}
        eager = policy.predict_action(obs, generator=torch.Generator().manual_seed(2))["action"]
        traced = tiny_policy().optimize_for_inference()
        torch.testing.assert_close(traced.predict_action(obs, generator=torch.Generator().manual_seed(2))["action"],
                                   eager, rtol=0, atol=1e-6)
