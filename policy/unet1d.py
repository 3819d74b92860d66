"""1-D temporal U-Net for action sequences, conditioned by FiLM on the diffusion step and observations.

Input x: (B, T, action_dim) noisy actions; output: the same shape (ε, x₀ or v, per the scheduler).
Each residual block computes

    h = Mish(GN(Conv(x)));  h = γ(c) ⊙ h + β(c);  h = Mish(GN(Conv(h)));  out = h + Conv1x1(x)

with c = [MLP(sinusoid(k)), global_cond] (Perez et al. 2018, FiLM). Each level holds
``blocks_per_level`` residual blocks (2 in the paper; fewer for a cheaper distilled student), as does the middle;
a sequence gives one count per stage instead (``stage_block_counts``).
The down path halves T at each level with a stride-2 conv (16 → 8 → 4 for three levels), the up path
concatenates skips and doubles T with a transposed conv.
"""
from __future__ import annotations

import torch
from torch import nn

from dpstack.diffusion.embedding import SinusoidalStepEmbedding


def stage_block_counts(blocks_per_level: int | tuple[int, ...], n_levels: int) -> tuple[list[int], int, list[int]]:
    """Residual blocks per stage: (down levels, middle, up levels). An int b gives b everywhere; a sequence gives
    2·n_levels counts in forward order, e.g. (2, 2, 1, 0, 2, 2) for three levels: the deepest level's second block
    and both middle blocks removed. A level's first block changes the width, so down and up counts are ≥ 1;
    the middle may be empty."""
    if isinstance(blocks_per_level, int) and not isinstance(blocks_per_level, bool):
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be ≥ 1, got {blocks_per_level}")
        return [blocks_per_level] * n_levels, blocks_per_level, [blocks_per_level] * (n_levels - 1)
    counts = list(blocks_per_level) if isinstance(blocks_per_level, (list, tuple)) else []
    if len(counts) != 2 * n_levels or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ValueError(f"blocks_per_level must be an integer or {2 * n_levels} integers (down levels, middle, "
                         f"up levels) for {n_levels} levels, got {blocks_per_level!r}")
    down, mid, up = counts[:n_levels], counts[n_levels], counts[n_levels + 1:]
    if min(down + up) < 1 or mid < 0:
        raise ValueError(f"blocks_per_level {blocks_per_level!r}: every down and up level needs ≥ 1 block "
                         "(its first changes the width) and the middle ≥ 0")
    return down, mid, up


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
        blocks_per_level: int | tuple[int, ...] = 2,
    ) -> None:
        super().__init__()
        down_dims = tuple(down_dims)
        down_counts, mid_count, up_counts = stage_block_counts(blocks_per_level, len(down_dims))
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
                block(cin, cout), *(block(cout, cout) for _ in range(down_counts[level] - 1)),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not is_last else nn.Identity(),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]) for _ in range(mid_count)])
        self.up = nn.ModuleList()
        for level, (cout, cin) in enumerate(zip(reversed(down_dims[:-1]), reversed(down_dims[1:]))):
            self.up.append(nn.ModuleList([
                block(2 * cin, cout), *(block(cout, cout) for _ in range(up_counts[level] - 1)),
                nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
            ]))
        self.head = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                  nn.Conv1d(down_dims[0], action_dim, 1))
        self.time_divisor = 2 ** (n_levels - 1)

    def init_from_deeper(self, deeper: "ConditionalUnet1D") -> None:
        """Block-removed initialisation (Kim et al. 2024, BK-SDM): copy ``deeper``'s weights, keeping the first
        residual blocks of every stage (as many as this net has there). Widths must match."""
        mine, theirs = self.stage_block_counts(), deeper.stage_block_counts()
        if len(mine[0]) != len(theirs[0]) or any(m > t for m, t in zip(_flat(mine), _flat(theirs))):
            raise ValueError(f"cannot initialise blocks per stage {_flat(mine)} from a net with {_flat(theirs)}: "
                             "every stage needs at least as many blocks in the deeper net")
        pairs = [(self.step_encoder, deeper.step_encoder), (self.head, deeper.head), *zip(self.mid, deeper.mid)]
        for mine, theirs in zip([*self.down, *self.up], [*deeper.down, *deeper.up]):
            pairs += [*zip(mine[:-1], theirs[:-1]), (mine[-1], theirs[-1])]
        for module, source in pairs:
            module.load_state_dict(source.state_dict())

    def stage_block_counts(self) -> tuple[list[int], int, list[int]]:
        """Residual blocks per stage, as ``stage_block_counts`` reads ``blocks_per_level``."""
        return [len(level) - 1 for level in self.down], len(self.mid), [len(level) - 1 for level in self.up]

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


def _flat(counts: tuple[list[int], int, list[int]]) -> list[int]:
    down, mid, up = counts
    return [*down, mid, *up]
