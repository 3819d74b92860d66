"""2-D U-Net denoiser for images (Ho et al. 2020, with the Improved-DDPM variance head).

Residual block (scale-shift conditioning on e = MLP(sinusoid(t)) [+ class embedding]):

    h = Conv(SiLU(GN(x)));  h = GN(h)·(1 + s(e)) + b(e);  h = Conv(Dropout(SiLU(h)));  out = h + Skip(x)

Self-attention (softmax(QKᵀ/√d) V over the H·W positions, residual) runs at the resolutions listed in
``attention_resolutions``; with ``context_dim`` each is followed there by cross-attention to a sequence of
context vectors c (text tokens): softmax(Q(x) K(c)ᵀ/√d) V(c), residual. The down path halves the resolution
with stride-2 convolutions, the up path concatenates skips and doubles it with nearest upsampling + conv
(cropped to the skip's size, so odd sizes such as 7 × 7 latents work). With ``learn_variance`` the output has
2C channels: the prediction (ε, x₀ or v) and o = tanh(·) ∈ [−1, 1], which the core reads as the weight
w = (o + 1)/2 of Σ = exp(w log β_t + (1 − w) log β̃_t). Class conditioning adds an
embedding of the label; label ``num_classes`` is the null label ∅ of classifier-free guidance.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dpstack.diffusion.embedding import SinusoidalStepEmbedding


@dataclass
class UNet2DConfig:
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    attention_heads: int = 4
    dropout: float = 0.1
    num_classes: int | None = None
    learn_variance: bool = False
    groups: int = 8
    context_dim: int | None = None  # cross-attention to (B, L, context_dim) context at the attention resolutions

    def __post_init__(self) -> None:
        self.channel_mults, self.attention_resolutions = tuple(self.channel_mults), tuple(self.attention_resolutions)
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ValueError(f"base_channels·{mult} = {self.base_channels * mult} is not divisible by "
                                 f"groups={self.groups} (GroupNorm)")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = nn.Linear(embed_dim, 2 * out_channels)
        self.norm_out = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv_out.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale, shift = self.scale_shift(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        return self.skip(x) + self.conv_out(self.dropout(F.silu(h)))


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(attended.transpose(-1, -2).reshape(b, c, h, w))


class CrossAttention(nn.Module):
    def __init__(self, channels: int, context_dim: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key_value = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(self.norm(x)).reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2)
        k, v = self.key_value(context).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(attended.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """The residual blocks (each followed by attention where asked) of one resolution."""

    def __init__(self, channels: list[tuple[int, int]], embed_dim: int, attention: bool, cfg: UNet2DConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(i, o, embed_dim, cfg.dropout, cfg.groups) for i, o in channels)
        self.attentions = nn.ModuleList(
            SelfAttention(o, cfg.attention_heads, cfg.groups) if attention else nn.Identity() for _, o in channels)
        self.cross_attentions = nn.ModuleList(
            CrossAttention(o, cfg.context_dim, cfg.attention_heads, cfg.groups) if attention and cfg.context_dim
            else nn.Identity() for _, o in channels)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, context: torch.Tensor | None,
                skips: list[torch.Tensor] | None = None, record: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Each block (on [h; skip] when ``skips`` are popped), then its attention(s); outputs go to ``record``."""
        for block, attention, cross in zip(self.blocks, self.attentions, self.cross_attentions):
            h = attention(block(h if skips is None else torch.cat([h, skips.pop()], dim=1), embedding))
            if not isinstance(cross, nn.Identity):
                h = cross(h, context)
            if record is not None:
                record.append(h)
        return h


class UNet2D(nn.Module):
    """ε/x₀/v-prediction network f(x_t, t[, y][, context]) for (B, C, H, W) images (or latents)."""

    def __init__(self, config: UNet2DConfig, image_size: int) -> None:
        super().__init__()
        self.config = cfg = config
        embed_dim = 4 * cfg.base_channels
        self.time_embedding = nn.Sequential(SinusoidalStepEmbedding(cfg.base_channels), nn.Linear(cfg.base_channels,
                                            embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_embedding = nn.Embedding(cfg.num_classes + 1, embed_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.down, self.downsample, skips = nn.ModuleList(), nn.ModuleList(), [cfg.base_channels]
        channels = cfg.base_channels
        resolutions = [image_size]  # a stride-2 convolution maps n to ⌈n / 2⌉
        for _ in widths[1:]:
            resolutions.append((resolutions[-1] + 1) // 2)
        for i, width in enumerate(widths):
            pairs = [(channels if j == 0 else width, width) for j in range(cfg.num_res_blocks)]
            self.down.append(Level(pairs, embed_dim, resolutions[i] in cfg.attention_resolutions, cfg))
            channels = width
            skips += [width] * cfg.num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            if not last:
                skips.append(width)
        self.middle = Level([(channels, channels), (channels, channels)], embed_dim, True, cfg)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(cfg.num_res_blocks + 1):
                pairs.append((channels + skips.pop(), width))
                channels = width
            self.up.append(Level(pairs, embed_dim, resolutions[i] in cfg.attention_resolutions, cfg))
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)))
        out_channels = cfg.in_channels * (2 if cfg.learn_variance else 1)
        self.head = nn.Sequential(nn.GroupNorm(cfg.groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3,
                                                                                            padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is None) != (self.config.context_dim is None):
            raise ValueError("context must be given exactly when the U-Net has cross-attention (context_dim)")
        embedding = self.time_embedding(t.expand(x.shape[0]) if t.ndim == 0 else t)
        if self.class_embedding is not None:
            if labels is None:  # unconditional: the null label
                labels = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            embedding = embedding + self.class_embedding(labels)
        h = self.stem(x)
        skips = [h]
        for level, downsample in zip(self.down, self.downsample):
            h = level(h, embedding, context, record=skips)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        h = self.middle(h, embedding, context)
        for level, upsample in zip(self.up, self.upsample):
            h = level(h, embedding, context, skips=skips)
            if not isinstance(upsample, nn.Identity):
                height, width = skips[-1].shape[-2:]
                h = upsample(h)[..., :height, :width]
        out = self.head(h)
        if self.config.learn_variance:  # the variance output o lives in [−1, 1]
            prediction, variance = out.chunk(2, dim=1)
            out = torch.cat([prediction, torch.tanh(variance)], dim=1)
        return out
