"""KL-regularised convolutional autoencoder (the first stage of latent diffusion, Rombach et al. 2022).

    q(z | x) = N(μ(x), diag σ²(x)),   x̂ = D(z),   z ∈ R^{c × H/f × W/f}   (f = 2^(levels−1))

    L = [ Σ_pixels (x − x̂)²  +  β · KL(q(z | x) ‖ N(0, I)) ] / (#pixels),   z ~ q(z | x) (reparameterised)

Convolutions with GroupNorm + SiLU residual blocks; stride-2 convolutions down, nearest upsampling + conv up.
The latent diffusion model standardises latents by ``scale = 1 / std(z)`` estimated on training data
(``latent_scale``), as LDM does, so that its noise schedule sees unit-variance latents.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64, 64)   # one level each; 3 levels: 28 → 14 → 7
    latent_channels: int = 4
    kl_weight: float = 1.0e-3                  # β
    groups: int = 8

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if any(width % self.groups for width in self.channels):
            raise ValueError(f"autoencoder channels {self.channels} must be divisible by groups={self.groups}")
        if self.image_size % self.downsampling:
            raise ValueError(f"image_size={self.image_size} is not divisible by the downsampling {self.downsampling}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be ≥ 0, got {self.kl_weight}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling

    @classmethod
    def from_dict(cls, values: dict) -> "AutoencoderConfig":
        return cls(**values)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class Residual(nn.Module):
    """x + Conv(SiLU(GN(Conv(SiLU(GN(x))))))."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(cfg: AutoencoderConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)]
    for i, width in enumerate(cfg.channels):
        if i:
            layers.append(nn.Conv2d(cfg.channels[i - 1], width, 3, stride=2, padding=1))
        layers.append(Residual(width, cfg.groups))
    layers += [nn.GroupNorm(cfg.groups, cfg.channels[-1]), nn.SiLU(),
               nn.Conv2d(cfg.channels[-1], 2 * cfg.latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: AutoencoderConfig) -> nn.Sequential:
    widths = cfg.channels[::-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
    for i, width in enumerate(widths):
        if i:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i - 1], width, 3, padding=1)]
        layers.append(Residual(width, cfg.groups))
    layers += [nn.GroupNorm(cfg.groups, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class KLAutoencoder(nn.Module):
    kind = "autoencoder"

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = _encoder(config), _decoder(config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_images(self, x: torch.Tensor) -> None:
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images of shape {tuple(x.shape)} given; this autoencoder takes (B, "
                             f"{', '.join(map(str, expected))})")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | x), each (B, c, H/f, W/f); log σ² clamped to [−30, 20] as in LDM."""
        self.check_images(x)
        mean, log_variance = self.encoder(x).chunk(2, dim=1)
        return mean, log_variance.clamp(-30.0, 20.0)

    @staticmethod
    def sample_posterior(mean: torch.Tensor, log_variance: torch.Tensor, generator=None) -> torch.Tensor:
        """z = μ + σ ε, ε ~ N(0, I) (reparameterised)."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * log_variance).exp() * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def kl_to_standard_normal(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²), per image (nats)."""
        return 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).flatten(1).sum(1)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """The module docstring's L on ``{"image": (B, C, H, W) in [−1, 1]}``."""
        x = batch["image"]
        mean, log_variance = self.encode(x)
        reconstruction = self.decode(self.sample_posterior(mean, log_variance, generator))
        squared_error = (x - reconstruction).pow(2).flatten(1).sum(1)
        kl = self.kl_to_standard_normal(mean, log_variance)
        return ((squared_error + self.config.kl_weight * kl) / x[0].numel()).mean()

    @torch.no_grad()
    def reconstruction_metrics(self, images: torch.Tensor, batch_size: int = 500) -> dict:
        """Held-out reconstruction error of D(μ(x)) on images in [−1, 1]: MSE (on [−1, 1]), PSNR (dB, on the
        [0, 1] range) and the mean KL per image (nats)."""
        errors, kls = [], []
        for chunk in images.split(batch_size):
            chunk = chunk.to(self.device)
            mean, log_variance = self.encode(chunk)
            errors.append((self.decode(mean).clamp(-1, 1) - chunk).pow(2).flatten(1).mean(1).cpu())
            kls.append(self.kl_to_standard_normal(mean, log_variance).cpu())
        mse = torch.cat(errors).double()
        psnr = 10 * torch.log10(1.0 / (mse / 4).clamp_min(1e-12))  # [0, 1] range: error/2, squared error/4
        return {"reconstruction_mse": float(mse.mean()), "reconstruction_psnr_db": float(psnr.mean()),
                "kl_nats": float(torch.cat(kls).double().mean()), "n_images": len(mse)}


@torch.no_grad()
def latent_scale(autoencoder: KLAutoencoder, images: torch.Tensor, batch_size: int = 500,
                 generator: torch.Generator | None = None) -> float:
    """1 / std of z ~ q(z | x) over ``images`` (LDM's scale factor: the diffusion model sees unit-variance latents)."""
    samples = []
    for chunk in images.split(batch_size):
        samples.append(autoencoder.sample_posterior(*autoencoder.encode(chunk.to(autoencoder.device)),
                                                    generator).flatten().cpu())
    return float(1.0 / torch.cat(samples).double().std())

