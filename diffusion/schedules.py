"""Noise schedules β_t and the table of quantities derived from them.

Index convention: array position ``i`` (0-based, as in diffusers) is step ``t = i + 1`` of Ho et al. (2020).
All tables are float64; callers cast to the working dtype when they use them.
"""
import math

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t evenly spaced from ``beta_start`` to ``beta_end`` (DDPM)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """√β_t evenly spaced: β_t = (lerp(√β_start, √β_end))² (latent-diffusion schedule)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine schedule: ᾱ(τ) = cos²((τ + s)/(1 + s)·π/2), β_t = min(1 − ᾱ(t/T)/ᾱ((t−1)/T), max_beta)."""
    tau = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((tau + s) / (1 + s) * (math.pi / 2)) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t = β_start + (β_end − β_start)·sigmoid(u_t), u_t evenly spaced on [−6, 6] (GeoDiff)."""
    u = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
    return torch.sigmoid(u) * (beta_end - beta_start) + beta_start


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T for a schedule named as in diffusers (``beta_start/end`` are ignored by the cosine schedule)."""
    if schedule == "squaredcos_cap_v2":
        return cosine_betas(num_timesteps)
    builders = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "sigmoid": sigmoid_betas}
    if schedule not in builders:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose from {BETA_SCHEDULES}")
    return builders[schedule](num_timesteps, beta_start, beta_end)


def transition_coefficients(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor) -> dict:
    """Everything a reverse step from ᾱ_t to ᾱ_prev needs (works for the full chain and for respaced chains).

    β_t = 1 − ᾱ_t/ᾱ_prev, β̃_t = β_t (1 − ᾱ_prev)/(1 − ᾱ_t),
    μ̃_t(x_t, x_0) = [√ᾱ_prev β_t/(1 − ᾱ_t)] x_0 + [√α_t (1 − ᾱ_prev)/(1 − ᾱ_t)] x_t.
    """
    ac, ac_prev = alphas_cumprod.double(), alphas_cumprod_prev.double()
    alphas = ac / ac_prev
    betas = 1 - alphas
    posterior_variance = betas * (1 - ac_prev) / (1 - ac)
    return {
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "alphas": alphas,
        "betas": betas,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "sqrt_recip_alphas_cumprod": ac.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "sqrt_alphas_cumprod_prev": ac_prev.sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_mean_coef1": ac_prev.sqrt() * betas / (1 - ac),
        "posterior_mean_coef2": alphas.sqrt() * (1 - ac_prev) / (1 - ac),
    }


class NoiseSchedule:
    """Table of β_t, α_t, ᾱ_t, ᾱ_{t−1}, posterior coefficients and log-variances for t = 1..T (float64)."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        for name, value in transition_coefficients(alphas_cumprod, alphas_cumprod_prev).items():
            setattr(self, name, value)
        self.betas = betas  # keep the exact input rather than 1 − ᾱ_t/ᾱ_{t−1}
        self.alphas = 1 - betas
        # β̃_1 = 0, so log β̃ is clipped by repeating β̃_2 at t = 1 (Improved DDPM).
        self.posterior_log_variance_clipped = torch.cat(
            [self.posterior_variance[1:2], self.posterior_variance[1:]]
        ).log()
        self.log_betas = betas.log()
        # fixed_large uses log β_t, except at t = 1 where β̃_2 keeps the decoder variance small (Improved DDPM).
        self.large_log_variance = torch.cat([self.posterior_log_variance_clipped[:1], self.log_betas[1:]])

    @classmethod
    def from_name(cls, schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
        """Build the table for a named β schedule."""
        return cls(make_betas(schedule, num_timesteps, beta_start, beta_end))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` cast to ``like``'s dtype/device, shaped (B, 1, …, 1) to broadcast against ``like``."""
        table = getattr(self, name).to(device=like.device, dtype=like.dtype)
        t = torch.as_tensor(t, device=like.device).reshape(-1)
        return table[t].reshape(-1, *([1] * (like.ndim - 1)))
