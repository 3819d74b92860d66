"""Timestep embedding shared by the denoising networks (the 1-D policy U-Net and the 2-D image U-Net)."""
import math

import torch
from torch import nn


class SinusoidalStepEmbedding(nn.Module):
    """emb(k)_i = sin(k·ω_i) ‖ cos(k·ω_i), ω_i = 10000^(−i/(d/2−1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        angles = steps.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
