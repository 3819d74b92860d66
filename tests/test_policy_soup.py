"""Weight averages of sibling policies (``python -m dpstack.policy.soup``)."""
import numpy as np
import pytest
import torch

from dpstack.datasets.normalizer import LinearNormalizer
from dpstack.policy.checkpoint import CheckpointError, load_checkpoint, load_policy, save_checkpoint
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy
from dpstack.policy.soup import average_policies, main

TINY = dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=16, sampler="ddim", num_inference_steps=5)


def normalizer(seed):
    rng = np.random.default_rng(seed)
    return LinearNormalizer().fit({"obs": rng.uniform(0, 512, (100, 20)).astype(np.float32),
                                   "action": rng.uniform(0, 512, (100, 2)).astype(np.float32)})


def write_policy(path, weight_seed, normalizer_seed=0, ema=True, **config):
    """A training-style checkpoint (raw and EMA weights) of a tiny policy with its own random weights."""
    torch.manual_seed(weight_seed)
    policy = DiffusionUnetPolicy(DiffusionPolicyConfig(**(TINY | config)), normalizer(normalizer_seed))
    states = {"model": {k: torch.zeros_like(v) if v.is_floating_point() and not k.startswith("normalizer.") else v
                        for k, v in policy.state_dict().items()}}
    states["ema_model" if ema else "model"] = policy.state_dict()
    save_checkpoint({"config": {"recipe": "policy"}, "policy_config": policy.config.to_dict(),
                     "state_dicts": states}, path)
    return policy


def test_soup_is_the_mean_of_the_ema_weights_and_keeps_the_normalizer(tmp_path):
    first = write_policy(tmp_path / "a.ckpt", weight_seed=1)
    second = write_policy(tmp_path / "b.ckpt", weight_seed=2, ema=False)  # raw weights only: those are used
    soup = average_policies([tmp_path / "a.ckpt", tmp_path / "b.ckpt"], tmp_path / "soup.ckpt")
    weights = load_checkpoint(soup)["state_dicts"]["model"]
    for key, value in first.state_dict().items():
        expected = value if key.startswith("normalizer.") else (value + second.state_dict()[key]) / 2
        torch.testing.assert_close(weights[key], expected)
    policy = load_policy(soup)
    obs = {"obs": torch.rand(3, 2, 20) * 512}
    assert policy.predict_action(obs)["action"].shape == (3, policy.config.n_action_steps, 2)


def test_soup_of_copies_acts_like_the_policy(tmp_path):
    write_policy(tmp_path / "a.ckpt", weight_seed=1)
    average_policies([tmp_path / "a.ckpt"] * 3, tmp_path / "soup.ckpt")
    obs = {"obs": torch.rand(4, 2, 20) * 512}
    actions = [load_policy(path).predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
               for path in (tmp_path / "a.ckpt", tmp_path / "soup.ckpt")]
    # (a + a + a) / 3 rounds within an ulp of a in float32; actions are in pixels (0-512)
    torch.testing.assert_close(actions[0], actions[1], rtol=1e-5, atol=1e-3)


def test_soup_refuses_policies_that_are_not_siblings(tmp_path):
    write_policy(tmp_path / "a.ckpt", weight_seed=1)
    write_policy(tmp_path / "other_normalizer.ckpt", weight_seed=2, normalizer_seed=1)
    write_policy(tmp_path / "wider.ckpt", weight_seed=2, down_dims=(16, 32, 128))
    with pytest.raises(CheckpointError, match="do not share a normaliser"):
        average_policies([tmp_path / "a.ckpt", tmp_path / "other_normalizer.ckpt"], tmp_path / "soup.ckpt")
    with pytest.raises(CheckpointError, match="different architectures"):
        average_policies([tmp_path / "a.ckpt", tmp_path / "wider.ckpt"], tmp_path / "soup.ckpt")
    with pytest.raises(ValueError, match="at least two"):
        average_policies([tmp_path / "a.ckpt"], tmp_path / "soup.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "soup.ckpt"), str(tmp_path / "a.ckpt"), str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 2 and not (tmp_path / "soup.ckpt").exists()
