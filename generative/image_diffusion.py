"""Image DDPM on the shared core: training objective, samplers and the exact variational bound.

Objectives (Ho et al. 2020; Nichol & Dhariwal 2021):
- ``simple``: L_simple = E_{t,x_0,ε} ‖ε − ε_θ(x_t, t)‖², with a fixed variance for sampling and the bound
  (``fixed_small``: σ² = β̃_t, ``fixed_large``: σ² = β_t);
- ``hybrid``: L_hybrid = L_simple + λ L_vlb with Σ_θ = exp(w log β_t + (1 − w) log β̃_t) learned (the
  mean is frozen inside L_vlb, so the variance head learns from L_vlb only).

Likelihood: −log p(x_0) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0 over all T terms, in bits/dim, with the discretised
Gaussian decoder L_0 on the 256 levels of the 8-bit images. The bound is on the discrete data itself, so
no dequantisation noise is added (it equals the bound on uniformly dequantised data, whose density is the
bin probability ÷ bin width).

Class conditioning, when ``unet.num_classes`` is set, trains with the label dropped to ∅ with probability
``class_dropout`` so that sampling can use classifier-free guidance ε̃ = ε(∅) + w (ε(y) − ε(∅)).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dpstack.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    NoiseSchedule,
    classifier_free_guidance,
    drop_conditions,
    hybrid_loss,
    prediction_target,
    q_sample,
    randn,
    sample_loop,
    simple_loss,
    vlb_bits_per_dim,
)
from dpstack.generative.unet2d import UNet2D, UNet2DConfig

OBJECTIVES = ("simple", "hybrid")
SAMPLERS = ("ddpm", "ddim")
FIXED_VARIANCES = ("fixed_small", "fixed_large")
DDPM_VARIANCES = (*FIXED_VARIANCES, "learned")  # sampling-time choices of σ² for DDPM (learned: hybrid models)


@dataclass
class ImageDiffusionConfig:
    image_size: int = 28
    unet: UNet2DConfig = field(default_factory=UNet2DConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"        # or squaredcos_cap_v2 (the Improved-DDPM cosine schedule)
    objective: str = "simple"            # or hybrid (learned variance)
    variance_type: str = "fixed_small"   # for ``simple``; ``hybrid`` always uses learned_range
    vlb_weight: float = 1e-3             # λ of L_hybrid
    prediction_type: str = "epsilon"
    class_dropout: float = 0.1           # p(y → ∅) when class-conditional

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNet2DConfig(**self.unet)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.unet.learn_variance != (self.objective == "hybrid"):
            raise ValueError("model.unet.learn_variance must be true exactly when model.objective=hybrid "
                             f"(got learn_variance={self.unet.learn_variance}, objective={self.objective})")
        if self.objective == "simple" and self.variance_type not in FIXED_VARIANCES:
            raise ValueError(f"model.variance_type must be one of {FIXED_VARIANCES} for the simple objective")
        if self.image_size % 2 ** (len(self.unet.channel_mults) - 1):
            raise ValueError(f"model.image_size={self.image_size} must be divisible by 2^(levels−1) = "
                             f"{2 ** (len(self.unet.channel_mults) - 1)}")
        NoiseSchedule.from_name(self.beta_schedule, 2)  # unknown schedule names fail here
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"model.class_dropout must be in [0, 1), got {self.class_dropout}")

    @property
    def sampling_variance(self) -> str:
        return "learned_range" if self.objective == "hybrid" else self.variance_type

    @classmethod
    def from_dict(cls, values: dict) -> "ImageDiffusionConfig":
        return cls(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["unet"] = self.unet.to_dict()
        return values


class ImageDiffusion(nn.Module):
    """A U-Net with its noise schedule: ``compute_loss(batch)``, ``sample(...)``, ``bits_per_dim(x_0)``."""

    kind = "image_diffusion"

    def __init__(self, config: ImageDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet2D(config.unet, config.image_size)
        self.schedule = NoiseSchedule.from_name(config.beta_schedule, config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def channels(self) -> int:
        return self.config.unet.in_channels

    def check_images(self, x: torch.Tensor) -> None:
        expected = (self.channels, self.config.image_size, self.config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images of shape {tuple(x.shape)} given; this model takes (B, {', '.join(map(str, expected))})")

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple or L_hybrid on a batch ``{"image": (B, C, H, W) in [−1, 1], "label": (B,)}``."""
        x0 = batch["image"]
        self.check_images(x0)
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        xt = q_sample(self.schedule, x0, t, noise)
        labels = None
        if self.config.unet.num_classes:
            null = torch.tensor(self.config.unet.num_classes, device=x0.device)
            labels = drop_conditions(batch["label"], null, self.config.class_dropout, generator)
        output = self.unet(xt, t, labels)
        if self.config.objective == "hybrid":
            return hybrid_loss(self.schedule, output, x0, xt, t, noise, self.config.prediction_type,
                               self.config.vlb_weight)
        return simple_loss(output, prediction_target(self.schedule, x0, noise, t, self.config.prediction_type))

    def denoiser(self, labels: torch.Tensor | None = None, guidance_scale: float = 1.0, with_variance: bool = True):
        """f(x_t, t) for the samplers: unconditional, class-conditional, or guided ε̃ = ε(∅) + w (ε(y) − ε(∅)).

        With a learned variance only the prediction is guided; the variance comes from the conditional pass,
        and ``with_variance=False`` drops it (DDIM sets its own σ).
        """
        keep = slice(None) if with_variance else slice(0, self.channels)
        if labels is None or guidance_scale == 1.0:
            return lambda x, t: self.unet(x, t, labels)[:, keep]
        null = torch.tensor(self.config.unet.num_classes, device=labels.device)
        guided = classifier_free_guidance(self.unet, labels, null, guidance_scale, guided_channels=self.channels)
        return lambda x, t: guided(x, t)[:, keep]

    def ddpm_variance(self, variance: str | None = None) -> str:
        """The scheduler's variance type for DDPM: the model's own (None), σ² = β̃ (fixed_small), σ² = β
        (fixed_large), or the learned interpolation (learned, hybrid models only)."""
        if variance is None:
            return self.config.sampling_variance
        if variance not in DDPM_VARIANCES:
            raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
        if variance == "learned" and self.config.objective != "hybrid":
            raise ValueError("variance='learned' needs a model trained with objective=hybrid (this one has no "
                             "variance head); use fixed_small or fixed_large")
        return "learned_range" if variance == "learned" else variance

    def make_scheduler(self, sampler: str = "ddim", variance: str | None = None):
        common = dict(num_train_timesteps=self.config.num_train_timesteps, beta_schedule=self.config.beta_schedule,
                      prediction_type=self.config.prediction_type, clip_sample=True, timestep_spacing="trailing")
        if sampler == "ddpm":
            return DDPMScheduler(variance_type=self.ddpm_variance(variance), **common)
        if sampler == "ddim":
            return DDIMScheduler(**common)
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ddim", steps: int | None = 50, eta: float = 0.0,
               labels: torch.Tensor | None = None, guidance_scale: float = 1.0, generator=None,
               noise: torch.Tensor | None = None, on_step=None, variance: str | None = None) -> torch.Tensor:
        """n images in [−1, 1]: DDPM ancestral sampling or DDIM(η) on a respaced chain of ``steps`` (None: all T).

        ``noise`` fixes x_T (then ``n`` must match); ``on_step(t, x_t, output)`` sees every step; ``variance``
        picks DDPM's σ² (``ddpm_variance``; DDIM sets σ from η and takes none).
        """
        if labels is not None and not self.config.unet.num_classes:
            raise ValueError("this model is unconditional: it takes no class labels")
        if labels is not None:
            labels = torch.as_tensor(labels, device=self.device).long().expand(n)
            if labels.min() < 0 or labels.max() >= self.config.unet.num_classes:
                raise ValueError(f"class labels must be in 0..{self.config.unet.num_classes - 1}")
        steps = steps or self.config.num_train_timesteps
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.config.num_train_timesteps}, got {steps}")
        if variance is not None and sampler != "ddpm":
            raise ValueError(f"variance is a DDPM choice; DDIM's σ comes from η (got sampler={sampler!r})")
        scheduler = self.make_scheduler(sampler, variance)
        shape = (n, self.channels, self.config.image_size, self.config.image_size)
        model = self.denoiser(labels, guidance_scale, with_variance=getattr(scheduler, "variance_type", "") == "learned_range")
        # DDIM re-derives ε̂ from the clipped x̂_0 (as denoising-diffusion-pytorch does): with the raw ε̂ the
        # step is inconsistent with its own x̂_0 and η = 0 got worse with more steps (FID 80 → 187, 20 → 100 steps).
        kwargs = {"eta": eta, "use_clipped_model_output": True} if sampler == "ddim" else {}
        if noise is None:
            noise = randn(shape, generator, device=self.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} given for {shape}")
        return sample_loop(model, scheduler, shape, steps, generator=generator, on_step=on_step, x_T=noise, **kwargs)

    @torch.no_grad()
    def bits_per_dim(self, x0: torch.Tensor, generator=None) -> dict:
        """The full bound of ``vlb_bits_per_dim`` (all T terms, one model call per t on the batch), per image.

        x̂_0 is clipped to [−1, 1] inside each p_θ(x_{t−1} | x_t), as in sampling: a valid model all the same."""
        self.check_images(x0)
        return vlb_bits_per_dim(lambda x, t: self.unet(x, t), self.schedule, x0, self.config.prediction_type,
                                self.config.sampling_variance, clip_sample_range=1.0,
                                generator=generator)
