"""Gaussian diffusion maths on batched tensors: forward process, posterior, parameterisations, reverse step.

Every function takes a :class:`~diffusion.schedules.NoiseSchedule` and integer timesteps ``t`` (shape (B,),
0-based) and broadcasts the per-timestep coefficients over the remaining dimensions of the data.
"""
from typing import NamedTuple

import torch

from .schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw from q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
    return schedule.extract("sqrt_alphas_cumprod", t, x0) * x0 + schedule.extract(
        "sqrt_one_minus_alphas_cumprod", t, x0
    ) * noise


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I); returns (μ̃_t, β̃_t, clipped log β̃_t)."""
    mean = schedule.extract("posterior_mean_coef1", t, xt) * x0 + schedule.extract("posterior_mean_coef2", t, xt) * xt
    variance = schedule.extract("posterior_variance", t, xt)
    return mean, variance, schedule.extract("posterior_log_variance_clipped", t, xt)


def x0_from_eps(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
    return schedule.extract("sqrt_recip_alphas_cumprod", t, xt) * xt - schedule.extract(
        "sqrt_recipm1_alphas_cumprod", t, xt
    ) * eps


def eps_from_x0(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t)."""
    return (xt - schedule.extract("sqrt_alphas_cumprod", t, xt) * x0) / schedule.extract(
        "sqrt_one_minus_alphas_cumprod", t, xt
    )


def velocity(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)."""
    return schedule.extract("sqrt_alphas_cumprod", t, x0) * eps - schedule.extract(
        "sqrt_one_minus_alphas_cumprod", t, x0
    ) * x0


def x0_from_v(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
    return schedule.extract("sqrt_alphas_cumprod", t, xt) * xt - schedule.extract(
        "sqrt_one_minus_alphas_cumprod", t, xt
    ) * v


def eps_from_v(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε = √ᾱ_t v + √(1 − ᾱ_t) x_t."""
    return schedule.extract("sqrt_alphas_cumprod", t, xt) * v + schedule.extract(
        "sqrt_one_minus_alphas_cumprod", t, xt
    ) * xt


def prediction_target(schedule, x0, noise, t, prediction_type: str = "epsilon") -> torch.Tensor:
    """Regression target of L_simple for a parameterisation: ε, x_0 or v."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return velocity(schedule, x0, noise, t)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_x0(schedule, model_output, xt, t, prediction_type: str = "epsilon") -> torch.Tensor:
    """x̂_0 from the network output under the given parameterisation."""
    if prediction_type == "epsilon":
        return x0_from_eps(schedule, xt, t, model_output)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return x0_from_v(schedule, xt, t, model_output)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Imagen dynamic thresholding: s = clamp(quantile_ratio(|x̂_0|), 1, max_value) per sample; x̂_0 ← clip(x̂_0, ±s)/s."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs().float(), ratio, dim=1).clamp(1, max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ReverseStep(NamedTuple):
    """Parameters of p_θ(x_{t−1} | x_t) = N(mean, variance) and the x̂_0 used to build the mean."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor


def model_log_variance(schedule, t, like, variance_type: str, variance_output=None) -> torch.Tensor:
    """log σ_t² for each variance type.

    fixed_small: log β̃_t (clipped at t = 1); fixed_large: log β_t, with β̃_2 at t = 1 as in Improved DDPM
    so the decoder L_0 stays well defined; learned: σ² is the output itself;
    learned_range: v·log β_t + (1 − v)·log β̃_t with v = (output + 1)/2.
    """
    small = schedule.extract("posterior_log_variance_clipped", t, like)
    if variance_type in ("fixed_small", "fixed_small_log"):
        return small.expand_as(like)
    if variance_type in ("fixed_large", "fixed_large_log"):
        return schedule.extract("large_log_variance", t, like).expand_as(like)
    if variance_type == "learned":
        return variance_output.log()
    if variance_type == "learned_range":
        frac = (variance_output + 1) / 2
        return frac * schedule.extract("log_betas", t, like) + (1 - frac) * small
    raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")


def p_mean_variance(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    clip_sample_range: float | None = None,
    thresholding: bool = False,
) -> ReverseStep:
    """p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0), σ_t²): x̂_0 from the output, optionally clipped/thresholded.

    For learned variance types the output carries twice the channels of x_t along dim 1: (prediction, variance).
    """
    variance_output = None
    if variance_type in ("learned", "learned_range"):
        model_output, variance_output = model_output.split(xt.shape[1], dim=1)
    pred_x0 = predict_x0(schedule, model_output, xt, t, prediction_type)
    if thresholding:
        pred_x0 = dynamic_threshold(pred_x0)
    elif clip_sample_range is not None:
        pred_x0 = pred_x0.clamp(-clip_sample_range, clip_sample_range)
    mean, _, _ = q_posterior(schedule, pred_x0, xt, t)
    log_variance = model_log_variance(schedule, t, xt, variance_type, variance_output)
    return ReverseStep(mean, log_variance.exp(), log_variance, pred_x0)
