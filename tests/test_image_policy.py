"""The image (hybrid) Diffusion Policy: vision encoder, crops, configs and a tiny train → eval run."""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dpstack.datasets.normalizer import LinearNormalizer, unit_range_to_symmetric
from dpstack.datasets.pusht import PushTLowdimDataset
from dpstack.policy.checkpoint import load_checkpoint, load_policy
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy
from dpstack.policy.vision import CropRandomizer, ImageObsEncoder, ScaledResNet18Trunk, build_image_encoder, resnet18_trunk
from dpstack.training.config import validate_config
from dpstack.training.workspace import TrainingWorkspace

REPO = Path(__file__).resolve().parent.parent
TINY_ENCODER = {"width": 8}
TINY_POLICY = dict(obs_type="image", obs_dim=2, down_dims=(16, 32, 64), diffusion_step_embed_dim=16,
                   sampler="ddim", num_inference_steps=3, image_encoder=TINY_ENCODER)


def encoder(**settings) -> ImageObsEncoder:
    torch.manual_seed(0)
    return build_image_encoder(SimpleNamespace(obs_dim=2, image_encoder=settings))


def image_obs(n: int) -> dict:
    return {"image": torch.rand(n, 3, 96, 96) * 2 - 1, "agent_pos": torch.rand(n, 2) * 2 - 1}


def tiny_image_policy(**changes) -> DiffusionUnetPolicy:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit({"agent_pos": rng.uniform(0, 512, (50, 2)).astype(np.float32),
                                         "action": rng.uniform(0, 512, (50, 2)).astype(np.float32),
                                         "aux_keypoints": rng.uniform(0, 512, (50, 18)).astype(np.float32)})
    normalizer["image"] = unit_range_to_symmetric()
    return DiffusionUnetPolicy(DiffusionPolicyConfig(**TINY_POLICY | changes), normalizer)


def test_encoder_maps_a_step_to_image_features_then_agent_pos():
    net = encoder(**TINY_ENCODER).eval()
    obs = image_obs(5)
    features = net(obs)
    assert features.shape == (5, 66) and net.output_dim == 66
    torch.testing.assert_close(features[:, 64:], obs["agent_pos"])  # image first, agent_pos last
    other = dict(obs, image=torch.flip(obs["image"], dims=[-1]))
    assert not torch.allclose(features[:, :64], net(other)[:, :64])  # the image matters
    assert encoder(width=8, feature_dim=32, num_keypoints=8).output_dim == 34
    with pytest.raises(ValueError, match="unknown image_encoder keys"):
        encoder(widht=8)
    with pytest.raises(ValueError, match="backbone"):
        encoder(backbone="vit")


def test_spatial_softmax_keypoints_are_expected_coordinates():
    net = encoder(**TINY_ENCODER)
    pool = net.pool
    features = torch.randn(3, 64, 3, 3)
    keypoints = pool(features).reshape(3, 32, 2)
    assert keypoints.abs().max() <= 1.0
    # A map peaked at the bottom-right corner gives (x, y) ≈ (1, 1).
    nn.init.zeros_(pool.keypoints.weight), nn.init.zeros_(pool.keypoints.bias)
    peaked = torch.zeros(1, 64, 3, 3)
    peaked[0, 0, 2, 2] = 100.0
    pool.keypoints.weight.data[:, 0] = 1.0
    torch.testing.assert_close(pool(peaked), torch.ones(1, 64), atol=1e-4, rtol=0)


def test_no_batchnorm_anywhere_in_the_policy():
    policy = tiny_image_policy()
    assert not [m for m in policy.modules() if isinstance(m, _BatchNorm)]
    assert any(isinstance(m, nn.GroupNorm) for m in policy.obs_encoder.modules())
    paper = encoder()
    assert not [m for m in paper.modules() if isinstance(m, _BatchNorm)]
    for norm in (m for m in paper.modules() if isinstance(m, nn.GroupNorm)):
        assert norm.num_groups == norm.num_channels // 16


def coded_images(n: int) -> torch.Tensor:
    """Pixel (c, y, x) of image i holds a unique number, so a window reveals where it came from."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(96), torch.arange(96), indexing="ij")
    code = (c * 96 * 96 + y * 96 + x).float()
    return code[None] + 1e5 * torch.arange(n, dtype=torch.float32)[:, None, None, None]


def test_training_crops_are_random_sub_windows_per_sample():
    images = coded_images(32)
    crop = CropRandomizer(84).train()
    torch.manual_seed(0)
    out = crop(images)
    assert out.shape == (32, 3, 84, 84)
    offsets = []
    for i in range(32):
        corner = int(out[i, 0, 0, 0] - 1e5 * i)
        top, left = divmod(corner, 96)
        assert 0 <= top <= 12 and 0 <= left <= 12
        torch.testing.assert_close(out[i], images[i, :, top:top + 84, left:left + 84], rtol=0, atol=0)
        offsets.append((top, left))
    assert len(set(offsets)) > 10  # one offset per sample, not one per batch
    assert not torch.equal(crop(images), out)  # and a fresh draw each call


def test_eval_crop_is_the_exact_centre():
    images = coded_images(4)
    crop = CropRandomizer(84).eval()
    torch.testing.assert_close(crop(images), images[..., 6:90, 6:90], rtol=0, atol=0)
    net = encoder(**TINY_ENCODER).eval()
    obs = image_obs(2)
    torch.testing.assert_close(net(obs), net(obs))  # deterministic in eval
    with pytest.raises(ValueError, match="exceeds the image size"):
        CropRandomizer(100)(images)


def test_paper_encoder_is_resnet18_with_groupnorm():
    from torchvision.models.resnet import BasicBlock

    net = encoder()
    trunk = net.backbone
    assert [name for name, _ in trunk.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert trunk.conv1.kernel_size == (7, 7) and trunk.conv1.stride == (2, 2) and trunk.conv1.in_channels == 3
    for index, channels in enumerate((64, 128, 256, 512), start=1):
        blocks = list(getattr(trunk, f"layer{index}"))
        assert len(blocks) == 2 and all(isinstance(b, BasicBlock) for b in blocks)
        assert blocks[0].conv1.out_channels == channels and blocks[1].conv2.out_channels == channels
        assert (blocks[0].downsample is None) == (index == 1)
    assert trunk(torch.zeros(1, 3, 84, 84)).shape == (1, 512, 3, 3)
    assert net.pool.keypoints.in_channels == 512 and net.pool.keypoints.out_channels == 32
    assert net.head.in_features == 64 and net.head.out_features == 64
    assert 11.0e6 < sum(p.numel() for p in net.parameters()) < 11.4e6  # the reference's ~1.1e7 vision params
    # The width-scalable trunk has torchvision's layout exactly (same state-dict names and shapes).
    scaled = ScaledResNet18Trunk(64)
    assert {k: v.shape for k, v in scaled.state_dict().items()} == {k: v.shape for k, v in trunk.state_dict().items()}
    assert resnet18_trunk(16)(torch.zeros(1, 3, 84, 84)).shape == (1, 128, 3, 3)


def test_image_policy_loss_and_prediction_shapes():
    policy = tiny_image_policy()
    batch = {"obs": {"image": torch.rand(3, 16, 3, 96, 96), "agent_pos": torch.rand(3, 16, 2) * 512},
             "action": torch.rand(3, 16, 2) * 512}
    loss = policy.compute_loss(batch)
    loss.backward()
    assert policy.obs_encoder.backbone.conv1.weight.grad.abs().sum() > 0
    out = policy.eval().predict_action({"image": torch.rand(3, 2, 3, 96, 96), "agent_pos": torch.rand(3, 2, 2) * 512})
    assert out["action"].shape == (3, 8, 2) and out["action_pred"].shape == (3, 16, 2)


def test_keypoint_loss_adds_to_the_diffusion_loss_and_trains_the_encoder():
    """L = L_simple + λ ‖W f_img + b − norm(k)‖² over the observed steps; eval mode makes the crop deterministic."""
    policy = tiny_image_policy(aux_keypoint_weight=0.5).eval()
    batch = {"obs": {"image": torch.rand(3, 2, 3, 96, 96), "agent_pos": torch.rand(3, 2, 2) * 512},
             "action": torch.rand(3, 16, 2) * 512, "aux_keypoints": torch.rand(3, 2, 18) * 512}
    total = policy.compute_loss(batch, torch.Generator().manual_seed(0))
    features = policy._step_features(batch["obs"])
    targets = policy.normalizer["aux_keypoints"].normalize(batch["aux_keypoints"]).reshape(6, 18)
    keypoint_loss = ((policy.aux_keypoint_head(features[:, :64]) - targets) ** 2).mean()
    head, policy.aux_keypoint_head = policy.aux_keypoint_head, None
    simple = policy.compute_loss(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(total, simple + 0.5 * keypoint_loss)
    policy.aux_keypoint_head = head
    policy.compute_loss(batch).backward()
    assert head.weight.grad.abs().sum() > 0 and policy.obs_encoder.backbone.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="aux_keypoints"):
        policy.compute_loss({key: value for key, value in batch.items() if key != "aux_keypoints"})
    with pytest.raises(ValueError, match="obs_type image"):
        DiffusionPolicyConfig(aux_keypoint_weight=1.0)
    with pytest.raises(ValueError, match="aux_keypoint_weight"):
        DiffusionPolicyConfig(obs_type="image", obs_dim=2, aux_keypoint_weight=-1.0)
    assert tiny_image_policy().aux_keypoint_head is None  # off by default: no extra parameters


def test_keypoint_loss_teaches_the_encoder_where_the_block_is(pusht_zarr):
    """On real frames the encoder learns to read the block's keypoints: the held-out keypoint error falls."""
    from dpstack.datasets.pusht import PushTImageDataset

    dataset = PushTImageDataset(pusht_zarr, n_obs_steps=2, keypoint_targets=True, max_train_episodes=None)
    rng = np.random.default_rng(0)
    train, held_out = (dataset.batch(rng.choice(len(dataset), 64, replace=False)) for _ in range(2))
    policy = tiny_image_policy(aux_keypoint_weight=1.0)
    policy.normalizer = dataset.get_normalizer()
    net = nn.ModuleList([policy.obs_encoder, policy.aux_keypoint_head])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def keypoint_loss(batch):
        return policy._aux_keypoint_loss(policy._step_features(batch["obs"]), batch)

    policy.eval()
    with torch.no_grad():
        before = keypoint_loss(held_out).item()
    torch.manual_seed(0)
    for _ in range(60):
        policy.train()
        optimizer.zero_grad()
        keypoint_loss(train).backward()
        optimizer.step()
    policy.eval()
    with torch.no_grad():
        after = keypoint_loss(held_out).item()
    assert after < 0.5 * before, (before, after)


TINY_RUN = [
    "policy.image_encoder.width=8", "policy.down_dims=[16,32,64]", "policy.diffusion_step_embed_dim=16",
    "policy.num_inference_steps=3", "task.dataset.max_train_episodes=null", "training.batch_size=64",
    # all episodes: validation is every episode not trained on, so few training episodes make it slow
    "training.num_epochs=1", "training.max_train_steps=3", "training.lr_warmup_steps=1",
    "training.rollout_every=1", "training.checkpoint_every=1", "training.progress=false", "training.num_threads=1",
    "eval.n_test=2", "eval.n_train=0", "eval.n_envs=2", "eval.n_workers=0", "eval.max_steps=16",
    "eval.n_test_videos=0", "eval.n_train_videos=0", "logging.mode=disabled",
]


def test_tiny_image_train_checkpoint_eval(tmp_path, pusht_zarr):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="pusht_image_cpu",
                      overrides=TINY_RUN + ["task.dataset.mirror=true", "policy.aux_keypoint_weight=1.0"])
    validate_config(cfg)
    workspace = TrainingWorkspace(cfg, tmp_path)
    metrics = workspace.run()
    # The image task's windows (horizon 16, pads 1 and 7, all training episodes), counted without the images.
    recorded_windows = len(PushTLowdimDataset(pusht_zarr, horizon=16, pad_before=1, pad_after=7, seed=42,
                                              val_ratio=0.02, max_train_episodes=None))
    assert workspace.batches_per_epoch == math.ceil(2 * recorded_windows / 64)  # the mirror doubles them
    assert metrics["global_step"] == 3 and "test/mean_score" in metrics and "val_loss" in metrics
    policy = load_policy(tmp_path / "checkpoints" / "latest.ckpt")
    assert not policy.training and policy.config.image_encoder["width"] == 8
    assert policy.aux_keypoint_head is not None and "aux_keypoints" in policy.normalizer.keys()
    obs = {"image": torch.rand(2, 2, 3, 96, 96), "agent_pos": torch.rand(2, 2, 2) * 512}
    assert policy.predict_action(obs)["action"].shape == (2, 8, 2)


def test_reference_command_config_composes(monkeypatch):
    monkeypatch.chdir(REPO)  # the root config's search path entry (file://configs) is relative to the repo root
    overrides = ["training.seed=42", "training.device=cpu",
                 "hydra.run.dir=data/outputs/${now:%Y.%m.%d}/${now:%H.%M.%S}_${name}_${task_name}"]
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        cfg = compose(config_name="image_pusht_diffusion_policy_cnn.yaml", overrides=overrides,
                      return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("data/outputs/")
    assert cfg.name == "train_diffusion_unet_hybrid" and cfg.task_name == "pusht_image"
    assert cfg.task.obs_type == "image" and cfg.task.dataset.max_train_episodes == 90
    assert cfg.training.seed == 42 and cfg.training.batch_size == 64 and cfg.training.num_epochs == 3050
    assert cfg.training.lr == 1e-4
    del cfg.hydra
    validate_config(cfg)
    assert cfg.training.device == "cpu"
    config = DiffusionPolicyConfig.from_dict(OmegaConf.to_container(cfg.policy, resolve=True))
    assert config.down_dims == (512, 1024, 2048) and config.diffusion_step_embed_dim == 128
    assert config.kernel_size == 5 and config.n_groups == 8
    assert (config.horizon, config.n_obs_steps, config.n_action_steps) == (16, 2, 8)
    assert config.sampler == "ddpm" and config.num_inference_steps == 100 and config.num_train_timesteps == 100
    assert config.image_encoder == {"backbone": "resnet18", "width": 64, "crop_size": 84, "num_keypoints": 32,
                                    "feature_dim": 64, "image_key": "image", "lowdim_keys": ["agent_pos"]}


def test_image_training_resumes_exactly(tmp_path, pusht_zarr):
    """Random crops draw from the CPU generator that checkpoints save, so a resumed run matches a straight one."""
    run = [o for o in TINY_RUN if not o.startswith(("task.dataset", "training.max_train_steps", "training.num_epochs",
                                                     "training.rollout_every"))]
    run += ["task.dataset.max_train_episodes=2", "training.val_every=0", "training.rollout_every=0",
            "training.num_epochs=2"]

    def config(*extra):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            cfg = compose(config_name="pusht_image_cpu", overrides=run + list(extra))
        validate_config(cfg)
        return cfg

    straight = TrainingWorkspace(config(), tmp_path / "straight").run()
    per_epoch = straight["global_step"] // 2
    assert per_epoch >= 2
    TrainingWorkspace(config(f"training.max_train_steps={per_epoch}"), tmp_path / "resumed").run()
    TrainingWorkspace(config(), tmp_path / "resumed").run()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.ckpt")["state_dicts"]["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "latest.ckpt")["state_dicts"]["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
