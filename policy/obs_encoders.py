"""Observation encoders: map one normalized observation step to a feature vector.

The policy encodes each of the n_obs_steps steps with the same encoder and concatenates the
features into the U-Net's global condition.
"""
from __future__ import annotations

import torch
from torch import nn


class LowdimObsEncoder(nn.Module):
    """Identity on a low-dim observation vector ``{"obs": (N, D)}`` → (N, D)."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.output_dim = obs_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return obs["obs"]


def build_obs_encoder(config) -> nn.Module:
    """The encoder a policy config asks for."""
    if config.obs_type == "lowdim":
        return LowdimObsEncoder(config.obs_dim)
    from dpstack.policy.vision import build_image_encoder

    return build_image_encoder(config)
