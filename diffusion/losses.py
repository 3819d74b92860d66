"""Training and evaluation objectives: L_simple, the variational-bound terms, L_hybrid and the full VLB in bits/dim.

Per-term functions return per-element values in nats; the VLB helpers average over data dimensions and
convert to bits (÷ log 2), the unit of Ho et al. (2020) and Nichol & Dhariwal (2021).
"""
import math

import torch

from .gaussian import p_mean_variance, prediction_target, q_posterior, q_sample
from .schedules import NoiseSchedule

LOG2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def simple_loss(model_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_simple = E‖target − f_θ(x_t, t)‖² averaged over elements (target ε, x_0 or v)."""
    return torch.mean((model_output - target) ** 2)


def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ½[log σ₂²/σ₁² + σ₁²/σ₂² + (μ₁ − μ₂)²/σ₂² − 1], elementwise."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1)


def _log_ndtr_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Φ(u) − Φ(l)) for u > l, evaluated in whichever tail keeps it accurate (Φ(u) − Φ(l) = Φ(−l) − Φ(−u))."""
    flip = (upper + lower) > 0
    a, b = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_a + torch.log(-torch.expm1(log_b - log_a))


def discretized_gaussian_log_likelihood(x, mean, log_variance, num_bins: int = 256) -> torch.Tensor:
    """log ∫_{bin(x)} N(y; μ, σ²) dy for data on ``num_bins`` evenly spaced values in [−1, 1].

    Bins have half-width 1/(num_bins − 1); the two outermost bins extend to −∞ and +∞, so the
    probabilities of all bins sum to one.
    """
    half_width = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-0.5 * log_variance)
    upper = (x - mean + half_width) * inv_std
    lower = (x - mean - half_width) * inv_std
    interior = _log_ndtr_difference(upper, lower)
    left_edge = torch.special.log_ndtr(upper)
    right_edge = torch.special.log_ndtr(-lower)
    return torch.where(x < -1 + half_width, left_edge, torch.where(x > 1 - half_width, right_edge, interior))


def prior_kl(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample, in bits/dim (no trainable parameters)."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean = schedule.extract("sqrt_alphas_cumprod", t, x0) * x0
    log_var = schedule.extract("sqrt_one_minus_alphas_cumprod", t, x0).pow(2).log().expand_as(x0)
    return mean_flat(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0))) / LOG2


def vlb_term(schedule, x0, xt, t, model_output, prediction_type="epsilon", variance_type="fixed_small",
             clip_sample_range=None) -> torch.Tensor:
    """Per-sample L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) for t > 1 and
    L_0 = −log p_θ(x_0 | x_1) (discretised decoder) at t = 1 (index 0), in bits/dim."""
    true_mean, _, true_log_var = q_posterior(schedule, x0, xt, t)
    p = p_mean_variance(schedule, model_output, xt, t, prediction_type, variance_type, clip_sample_range)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / LOG2
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, p.log_variance)) / LOG2
    return torch.where(torch.as_tensor(t, device=x0.device) == 0, decoder_nll, kl)


def hybrid_loss(schedule, model_output, x0, xt, t, noise, prediction_type="epsilon", vlb_weight=1e-3):
    """L_hybrid = L_simple + λ·L_vlb (Improved DDPM) with a ``learned_range`` variance.

    ``model_output`` holds (prediction, v) along dim 1. The mean is detached inside L_vlb, so the mean is
    trained by L_simple only and σ_t by L_vlb only. With t uniform on {1..T}, T·L_{t−1} is an unbiased
    estimate of Σ_t L_{t−1}, giving the per-sample loss ‖target − prediction‖²/D + λ·T·L_{t−1}.
    """
    prediction, variance_output = model_output.split(x0.shape[1], dim=1)
    mse = mean_flat((prediction - prediction_target(schedule, x0, noise, t, prediction_type)) ** 2)
    frozen_mean_output = torch.cat([prediction.detach(), variance_output], dim=1)
    vlb = vlb_term(schedule, x0, xt, t, frozen_mean_output, prediction_type, "learned_range")
    return (mse + vlb_weight * schedule.num_timesteps * vlb).mean()


@torch.no_grad()
def vlb_bits_per_dim(model, schedule: NoiseSchedule, x0, prediction_type="epsilon", variance_type="fixed_small",
                     clip_sample_range=None, generator=None) -> dict:
    """Full bound −log p(x_0) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0, per sample in bits/dim (evaluation only).

    Each L_{t−1} uses its own draw x_t ~ q(x_t | x_0); ``model(x_t, t)`` is called once per timestep on the
    whole batch. Returns ``{"total": (B,), "prior": (B,), "terms": (B, T)}`` with ``terms[:, i]`` = L_i.
    """
    terms = []
    for i in range(schedule.num_timesteps):
        t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = q_sample(schedule, x0, t, noise)
        terms.append(vlb_term(schedule, x0, xt, t, model(xt, t), prediction_type, variance_type, clip_sample_range))
    terms = torch.stack(terms, dim=1)
    prior = prior_kl(schedule, x0)
    return {"total": prior + terms.sum(dim=1), "prior": prior, "terms": terms}
