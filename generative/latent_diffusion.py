"""Latent text-to-image diffusion (Stable Diffusion in miniature) on the shared core.

    z_0 = s · E(x) (frozen KL autoencoder, s = 1 / std(z) from data),   c = TextEncoder(prompt)
    L = E_{t, z_0, ε} ‖ε − ε_θ(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t, c)‖²,   c → c(∅ = "") with probability p

The text encoder (a bidirectional character transformer) trains with the U-Net; the U-Net reads the
prompt's token states through cross-attention. Sampling runs DDPM or DDIM in latent space with
classifier-free guidance ε̃ = ε(∅) + w (ε(c) − ε(∅)) (w = 0: unconditional, w = 1: conditional), then
decodes x = D(z_0 / s). Prompts during training come from ``generative.prompts`` (the digit's label and
its true stroke weight).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from dpstack.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    NoiseSchedule,
    classifier_free_guidance,
    prediction_target,
    q_sample,
    randn,
    sample_loop,
    simple_loss,
)
from dpstack.generative.autoencoder import AutoencoderConfig, KLAutoencoder
from dpstack.generative.prompts import PromptTokenizer, describe, longest_prompt_length, stroke_weight_classes
from dpstack.generative.transformer import Transformer, TransformerConfig
from dpstack.generative.unet2d import UNet2D, UNet2DConfig

SAMPLERS = ("ddpm", "ddim")


@dataclass
class TextToImageConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text_encoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(
        vocab_size=PromptTokenizer().vocab_size, block_size=41, n_layer=2, n_head=4, d_model=64, dropout=0.0))
    unet: UNet2DConfig = field(default_factory=lambda: UNet2DConfig(
        in_channels=4, base_channels=64, channel_mults=(1, 2), attention_resolutions=(7, 4), context_dim=64))
    max_prompt_length: int = 40
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    condition_dropout: float = 0.1        # p(prompt → "")
    latent_scale: float = 1.0             # s, estimated from the training digits when training starts
    ink_thresholds: list | None = None    # per class (thin, thick) mean-ink boundaries, from the training digits

    def __post_init__(self) -> None:
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderConfig.from_dict(self.autoencoder)
        if isinstance(self.text_encoder, dict):
            self.text_encoder = TransformerConfig(**self.text_encoder)
        if isinstance(self.unet, dict):
            self.unet = UNet2DConfig(**self.unet)
        problems = []
        if self.unet.in_channels != self.autoencoder.latent_channels:
            problems.append(f"unet.in_channels={self.unet.in_channels} must equal autoencoder.latent_channels="
                            f"{self.autoencoder.latent_channels}")
        if self.unet.context_dim != self.text_encoder.d_model:
            problems.append(f"unet.context_dim={self.unet.context_dim} must equal text_encoder.d_model="
                            f"{self.text_encoder.d_model}")
        if self.text_encoder.block_size != self.max_prompt_length + 1:
            problems.append(f"text_encoder.block_size={self.text_encoder.block_size} must be max_prompt_length + 1 "
                            f"= {self.max_prompt_length + 1}")
        if self.text_encoder.vocab_size != PromptTokenizer().vocab_size or self.text_encoder.causal:
            problems.append(f"text_encoder must be bidirectional (causal=false) with vocab_size="
                            f"{PromptTokenizer().vocab_size}")
        if self.unet.learn_variance or self.unet.num_classes:
            problems.append("the latent U-Net has no class labels and no variance head (unet.num_classes=null, "
                            "unet.learn_variance=false)")
        if not 0 < self.condition_dropout < 1:
            problems.append(f"condition_dropout must be in (0, 1) (guidance needs the unconditional branch ε(∅) "
                            f"trained), got {self.condition_dropout}")
        if self.max_prompt_length < longest_prompt_length():
            problems.append(f"max_prompt_length={self.max_prompt_length} is shorter than the longest training or "
                            f"evaluation prompt ({longest_prompt_length()} characters)")
        if not self.latent_scale > 0:
            problems.append(f"latent_scale must be positive, got {self.latent_scale}")
        if problems:
            raise ValueError("model: " + "; ".join(problems))
        NoiseSchedule.from_name(self.beta_schedule, 2)  # unknown schedule names fail here

    @classmethod
    def from_dict(cls, values: dict) -> "TextToImageConfig":
        return cls(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.update(autoencoder=self.autoencoder.to_dict(), text_encoder=self.text_encoder.to_dict(),
                      unet=self.unet.to_dict())
        return values


class LatentTextToImage(nn.Module):
    """Frozen autoencoder + text encoder + cross-attention U-Net: ``compute_loss(batch)``, ``sample(prompts)``."""

    kind = "text_to_image"

    def __init__(self, config: TextToImageConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = KLAutoencoder(config.autoencoder).requires_grad_(False)
        self.text_encoder = Transformer(config.text_encoder)
        self.unet = UNet2D(config.unet, config.autoencoder.latent_size)
        self.schedule = NoiseSchedule.from_name(config.beta_schedule, config.num_train_timesteps)
        self.tokenizer = PromptTokenizer(config.max_prompt_length)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, max_prompt_length + 1, d) token states c of the prompts ("" is ∅)."""
        return self.text_encoder.features(self.tokenizer.encode(list(prompts)).to(self.device))

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """z_0 = s · z, z ~ q(z | x)."""
        return self.autoencoder.sample_posterior(*self.autoencoder.encode(x), generator) * self.config.latent_scale

    @torch.no_grad()
    def decode_latents(self, z0: torch.Tensor) -> torch.Tensor:
        """x = D(z_0 / s), clamped to [−1, 1]."""
        return self.autoencoder.decode(z0 / self.config.latent_scale).clamp(-1, 1)

    def training_prompts(self, images: torch.Tensor, labels: torch.Tensor, generator=None) -> list[str]:
        """One seen-template prompt per digit (true label and stroke weight), "" with probability p."""
        if self.config.ink_thresholds is None:
            raise ValueError("model.ink_thresholds is unset: the training recipe estimates it from the data")
        thresholds = torch.tensor(self.config.ink_thresholds, device=images.device)
        weights = stroke_weight_classes(images.flatten(1).mean(1), labels, thresholds).tolist()
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=images.device))
        rng = np.random.default_rng(seed)
        dropped = rng.random(len(weights)) < self.config.condition_dropout
        return ["" if drop else describe(int(label), weight, rng, "seen")
                for label, weight, drop in zip(labels.tolist(), weights, dropped)]

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple in latent space on ``{"image": (B, 1, 28, 28) in [−1, 1], "label": (B,)}``."""
        x0, labels = batch["image"], batch["label"]
        z0 = self.encode_images(x0, generator)
        context = self.encode_prompts(self.training_prompts(x0, labels, generator))
        t = torch.randint(0, self.config.num_train_timesteps, (len(z0),), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        output = self.unet(q_sample(self.schedule, z0, t, noise), t, context=context)
        return simple_loss(output, prediction_target(self.schedule, z0, noise, t, self.config.prediction_type))

    def make_scheduler(self, sampler: str = "ddim"):
        common = dict(num_train_timesteps=self.config.num_train_timesteps, beta_schedule=self.config.beta_schedule,
                      prediction_type=self.config.prediction_type, clip_sample=False, timestep_spacing="trailing")
        if sampler == "ddpm":
            return DDPMScheduler(variance_type="fixed_small", **common)
        if sampler == "ddim":
            return DDIMScheduler(**common)
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def denoiser(self, prompts: list[str], guidance_scale: float):
        """ε̃(z_t, t) for the prompts: conditional (w = 1) or guided against the empty prompt."""
        context = self.encode_prompts(prompts)
        if guidance_scale == 1.0:
            return lambda z, t: self.unet(z, t, context=context)
        null = self.encode_prompts([""])
        return classifier_free_guidance(lambda z, t, c: self.unet(z, t, context=c), context, null, guidance_scale)

    @torch.no_grad()
    def sample(self, prompts: list[str], guidance_scale: float = 3.0, sampler: str = "ddim", steps: int | None = 50,
               eta: float = 0.0, generator=None, noise: torch.Tensor | None = None, return_latents: bool = False):
        """One image in [−1, 1] per prompt (N, 1, 28, 28); ``noise`` fixes z_T; ``steps`` None runs all T."""
        steps = steps or self.config.num_train_timesteps
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.config.num_train_timesteps}, got {steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance scale must be ≥ 0, got {guidance_scale}")
        size, channels = self.config.autoencoder.latent_size, self.config.autoencoder.latent_channels
        shape = (len(prompts), channels, size, size)
        if noise is None:
            noise = randn(shape, generator, device=self.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} given for {shape}")
        kwargs = {"eta": eta} if sampler == "ddim" else {}
        z0 = sample_loop(self.denoiser(prompts, guidance_scale), self.make_scheduler(sampler), shape, steps,
                         generator=generator, x_T=noise, **kwargs)
        images = self.decode_latents(z0)
        return (images, z0) if return_latents else images
