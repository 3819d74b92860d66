"""1-D temporal U-Net for action sequences, conditioned by FiLM on the diffusion step and observations.

Input x: (B, T, action_dim) noisy actions; output: the same shape (ε, x₀ or v, per the scheduler).
Each residual block computes

    h = Mish(GN(Conv(x)));  h = γ(c) ⊙ h + β(c);  h = Mish(GN(Conv(h)));  out = h + Conv1x1(x)

with c = [MLP(sinusoid(k)), global_cond] (Perez et al. 2018, FiLM). Each level holds
``blocks_per_level`` residual blocks (2 in the paper; 1 for a cheaper distilled student), as does the middle.
The down path halves T at each level with a stride-2 conv (16 → 8 → 4 for three levels), the up path
concatenates skips and doubles T with a transposed conv.
"""
from __future__ import annotations

import torch
from torch import nn

from dpstack.diffusion.embedding import SinusoidalStepEmbedding


class ConvBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks with a per-channel scale and bias predicted from the condition in between."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.first = ConvBlock(in_channels, out_channels, kernel_size, n_groups)
        self.second = ConvBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.first(x) * scale + bias
        return self.second(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """ε_θ(x_k, k, global_cond) over action sequences (B, T, action_dim); T must divide 2^(levels−1)."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 256,
        blocks_per_level: int = 2,
    ) -> None:
        super().__init__()
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be ≥ 1, got {blocks_per_level}")
        down_dims = tuple(down_dims)
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(diffusion_step_embed_dim),
            nn.Linear(diffusion_step_embed_dim, 4 * diffusion_step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * diffusion_step_embed_dim, diffusion_step_embed_dim),
        )
        cond_dim = diffusion_step_embed_dim + global_cond_dim
        block = lambda cin, cout: FiLMResidualBlock(cin, cout, cond_dim, kernel_size, n_groups)  # noqa: E731
        channels = (action_dim,) + down_dims
        n_levels = len(down_dims)

        self.down = nn.ModuleList()
        for level, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            is_last = level == n_levels - 1
            self.down.append(nn.ModuleList([
                block(cin, cout), *(block(cout, cout) for _ in range(blocks_per_level - 1)),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not is_last else nn.Identity(),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]) for _ in range(blocks_per_level)])
        self.up = nn.ModuleList()
        for cout, cin in zip(reversed(down_dims[:-1]), reversed(down_dims[1:])):
            self.up.append(nn.ModuleList([
                block(2 * cin, cout), *(block(cout, cout) for _ in range(blocks_per_level - 1)),
                nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
            ]))
        self.head = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                  nn.Conv1d(down_dims[0], action_dim, 1))
        self.time_divisor = 2 ** (n_levels - 1)

    def init_from_deeper(self, deeper: "ConditionalUnet1D") -> None:
        """Block-removed initialisation (Kim et al. 2024, BK-SDM): copy ``deeper``'s weights, keeping the first
        ``blocks_per_level`` residual blocks of every level and of the middle. Widths must match."""
        if len(self.mid) > len(deeper.mid) or len(self.down) != len(deeper.down):
            raise ValueError(f"cannot initialise {len(self.down)} levels × {len(self.mid)} blocks from "
                             f"{len(deeper.down)} levels × {len(deeper.mid)} blocks")
        pairs = [(self.step_encoder, deeper.step_encoder), (self.head, deeper.head), *zip(self.mid, deeper.mid)]
        for mine, theirs in zip([*self.down, *self.up], [*deeper.down, *deeper.up]):
            pairs += [*zip(mine[:-1], theirs[:-1]), (mine[-1], theirs[-1])]
        for module, source in pairs:
            module.load_state_dict(source.state_dict())

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor) -> torch.Tensor:
        batch, horizon, _ = sample.shape
        if horizon % self.time_divisor:
            raise ValueError(f"horizon {horizon} must be a multiple of {self.time_divisor} for {len(self.down)} levels")
        steps = torch.as_tensor(timestep, device=sample.device)
        steps = steps.expand(batch) if steps.ndim == 0 else steps
        cond = torch.cat([self.step_encoder(steps), global_cond], dim=-1)

        x = sample.transpose(1, 2)
        skips = []
        for *blocks, downsample in self.down:
            for block in blocks:
                x = block(x, cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for *blocks, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            for block in blocks:
                x = block(x, cond)
            x = upsample(x)
        return self.head(x).transpose(1, 2)
