"""Image observation encoder of the image-based (hybrid) Diffusion Policy.

Per observation step the encoder maps ``{"image": (N, 3, 96, 96) in [-1, 1], "agent_pos": (N, 2)}``
to ``[f_img (feature_dim), agent_pos (2)]``, i.e. (N, 66) with the paper's settings:

    crop:      random crop_size × crop_size window per sample in training, the centre window in eval
    trunk:     ResNet18 convolutional layers (no pretraining, no avg-pool / fc) with every BatchNorm
               replaced by GroupNorm(C // 16, C) → (N, 8·width, h, w)   (512 × 3 × 3 for an 84 crop)
    keypoints: 1×1 conv to K maps, softmax over the h·w positions, expected (x, y) in [-1, 1] → 2K
    head:      Linear(2K, feature_dim)

as in Chi et al. 2023 (robomimic's VisualCore with a spatial-softmax pool and a crop randomizer).
``width`` (the first stage's channel count) is 64 for the paper; other widths build a ResNet18-style
trunk with the same layout and stage widths (w, 2w, 4w, 8w) for CPU-sized models.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_IMAGE_ENCODER = {
    "backbone": "resnet18",
    "width": 64,           # base channel count; 64 = torchvision's resnet18
    "crop_size": 84,       # random crop in training, centre crop in eval (paper: 84 of 96)
    "num_keypoints": 32,   # spatial-softmax keypoints → 2·num_keypoints values
    "feature_dim": 64,     # image feature size after the linear head
    "image_key": "image",
    "lowdim_keys": ["agent_pos"],  # appended after the image feature, in this order
}
BACKBONES = ("resnet18",)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with C // 16 groups (the Diffusion Policy BatchNorm replacement), at least one group."""
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


# --- cropping --------------------------------------------------------------------------------
def crop_windows(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """``images[n, :, top[n]:top[n]+size, left[n]:left[n]+size]`` for every n, in one gather from the
    (N, C, H-size+1, W-size+1, size, size) view of all windows (5-15x faster on a CPU than an element-wise
    gather; ``benchmarks/crop_speed.py``)."""
    windows = images.unfold(2, size, 1).unfold(3, size, 1)
    batch = torch.arange(images.shape[0], device=images.device)
    return windows[batch, :, top.to(images.device), left.to(images.device)]


class CropRandomizer(nn.Module):
    """Random ``size``×``size`` crops in training (one offset per sample), the centre crop in eval."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(f"crop_size {self.size} exceeds the image size {height}x{width}")
        if not self.training:
            top, left = (height - self.size) // 2, (width - self.size) // 2
            return images[..., top:top + self.size, left:left + self.size]
        n = images.shape[0]
        # Offsets come from the CPU generator on every device, so a checkpoint's saved RNG state
        # reproduces the crops on resume.
        top = torch.randint(0, height - self.size + 1, (n,))
        left = torch.randint(0, width - self.size + 1, (n,))
        return crop_windows(images, top, left, self.size)


# --- trunk -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs + identity/projection shortcut) with GroupNorm."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = group_norm(channels)  # named like torchvision's so state dicts line up
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = group_norm(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            group_norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ScaledResNet18Trunk(nn.Sequential):
    """ResNet18's conv layers at base width ``width`` (stages w, 2w, 4w, 8w, two blocks each)."""

    def __init__(self, width: int, in_channels: int = 3) -> None:
        stages, channels = [], width
        for index, stage_width in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(channels, stage_width, stride), BasicBlock(stage_width, stage_width)]
            stages.append(nn.Sequential(*blocks))
            channels = stage_width
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_channels, width, 7, 2, 3, bias=False))
        self.add_module("bn1", group_norm(width))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("maxpool", nn.MaxPool2d(3, 2, 1))
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.out_channels = channels
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def resnet18_trunk(width: int = 64) -> nn.Sequential:
    """Conv trunk (everything before avg-pool) of ResNet18 with GroupNorm; torchvision's own at width 64."""
    if width == 64:
        from torchvision.models import resnet18

        net = resnet18(weights=None, norm_layer=group_norm)
        trunk = nn.Sequential(OrderedDict(list(net.named_children())[:-2]))  # drop avgpool and fc
        trunk.out_channels = 512
        return trunk
    return ScaledResNet18Trunk(width)


# --- pooling and the encoder -----------------------------------------------------------------
class SpatialSoftmax(nn.Module):
    """K keypoints per feature map: 1×1 conv to K maps, softmax over positions, expected (x, y) ∈ [-1, 1]²."""

    def __init__(self, in_channels: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        self.num_keypoints = num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(features)
        n, k, height, width = maps.shape
        attention = F.softmax(maps.reshape(n, k, height * width), dim=-1).reshape(n, k, height, width)
        xs = torch.linspace(-1.0, 1.0, width, device=maps.device, dtype=maps.dtype)
        ys = torch.linspace(-1.0, 1.0, height, device=maps.device, dtype=maps.dtype)
        expected_x = (attention.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows, then E[x]
        expected_y = (attention.sum(dim=3) * ys).sum(dim=-1)
        return torch.stack([expected_x, expected_y], dim=-1).reshape(n, 2 * k)  # (x0, y0, x1, y1, …)


class ImageObsEncoder(nn.Module):
    """``{"image": (N, 3, H, W) in [-1, 1], <lowdim keys>: (N, d)}`` → (N, feature_dim + Σd), image first."""

    def __init__(self, lowdim_dim: int, backbone: str = "resnet18", width: int = 64, crop_size: int = 84,
                 num_keypoints: int = 32, feature_dim: int = 64, image_key: str = "image",
                 lowdim_keys: tuple[str, ...] | list[str] = ("agent_pos",)) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"image_encoder.backbone must be one of {BACKBONES}, got {backbone!r}")
        self.image_key, self.lowdim_keys = image_key, tuple(lowdim_keys)
        self.crop = CropRandomizer(crop_size)
        self.backbone = resnet18_trunk(width)
        self.pool = SpatialSoftmax(self.backbone.out_channels, num_keypoints)
        self.head = nn.Linear(2 * num_keypoints, feature_dim)
        self.image_feature_dim = feature_dim  # the first columns of forward's output
        self.output_dim = feature_dim + lowdim_dim

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(self.crop(images))))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.encode_image(obs[self.image_key])] + [obs[key] for key in self.lowdim_keys]
        return torch.cat(parts, dim=-1)


def image_encoder_settings(values: dict | None) -> dict:
    """``DEFAULT_IMAGE_ENCODER`` updated by ``values``; unknown keys are an error."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(DEFAULT_IMAGE_ENCODER))
    if unknown:
        raise ValueError(f"unknown image_encoder keys {unknown}; valid keys: {sorted(DEFAULT_IMAGE_ENCODER)}")
    return DEFAULT_IMAGE_ENCODER | values


def build_image_encoder(config) -> ImageObsEncoder:
    """The image encoder of a ``DiffusionPolicyConfig`` (``obs_dim`` = size of the low-dim keys together)."""
    return ImageObsEncoder(lowdim_dim=config.obs_dim, **image_encoder_settings(config.image_encoder))
