"""Consistency models on a discrete DDPM chain (Song et al. 2023; the boundary condition of Latent
Consistency Models, Luo et al. 2023).

A consistency function maps any point x_t of a probability-flow ODE trajectory to its origin x_0:

    f_θ(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t),
    c_skip(t) = σ_d² / ((s t)² + σ_d²),   c_out(t) = s t / √((s t)² + σ_d²),

so f_θ(x, 0) = x exactly (the boundary condition) and, for t ≥ 1, f_θ ≈ x̂_0 of the network's own
parameterisation (ε, x_0 or v). Distillation teaches f_θ(x_t, t) = f_θ⁻(x̂_s, s) for s < t, where x̂_s is one
deterministic DDIM step of a teacher from x_t (``ddim_jump``). Sampling (``ConsistencyScheduler``) evaluates
f once per step and re-noises its x̂_0 to the next timestep of the chain: 1–3 network calls per sample.
"""
from __future__ import annotations

import numpy as np
import torch

from .gaussian import eps_from_x0, predict_x0, q_sample
from .noise import randn
from .schedulers import SchedulerOutput, _Scheduler
from .schedules import NoiseSchedule


def boundary_coefficients(t, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """(c_skip(t), c_out(t)) of the module docstring, for a Python number or a float tensor ``t``."""
    scaled = t * timestep_scaling
    return sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2), scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5


def consistency_function(schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         prediction_type: str = "epsilon", timestep_scaling: float = 10.0,
                         sigma_data: float = 0.5) -> torch.Tensor:
    """f_θ(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t) at per-sample timesteps ``t`` (shape (B,))."""
    t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
    c_skip, c_out = boundary_coefficients(t.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1))),
                                          timestep_scaling, sigma_data)
    return c_skip * x_t + c_out * predict_x0(schedule, model_output, x_t, t, prediction_type)


def ddim_jump(schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              s: torch.Tensor, prediction_type: str = "epsilon", clip_sample: bool = True) -> torch.Tensor:
    """One deterministic DDIM step t → s at per-sample timesteps, as ``DDIMScheduler.step`` (η = 0) takes it:
    x_s = √ᾱ_s clip(x̂_0) + √(1 − ᾱ_s) ε̂, with ε̂ the network's (or derived from its unclipped x̂_0)."""
    x0 = predict_x0(schedule, model_output, x_t, t, prediction_type)
    eps = model_output if prediction_type == "epsilon" else eps_from_x0(schedule, x_t, t, x0)
    return q_sample(schedule, x0.clamp(-1, 1) if clip_sample else x0, s, eps)


class ConsistencyScheduler(_Scheduler):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x̂_0 = clip(f_θ(x_t, t));
    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'}) z, z ~ N(0, I), for the chain's next timestep t'; the last step
    returns x̂_0. n steps visit t_i = round(t_max (1 − i/n)), i = 0 … n − 1, from ``max_timestep`` t_max
    (default T − 1; an ε-model cannot reach x_0 from the last timesteps of a schedule whose ᾱ → 0, so a
    distilled policy starts where its teacher's DDIM chain starts)."""

    def __init__(self, num_train_timesteps=100, beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2",
                 trained_betas=None, clip_sample=True, prediction_type="epsilon", thresholding=False,
                 dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
                 max_timestep=None, timestep_scaling=10.0, sigma_data=0.5):
        config = dict(locals())
        del config["self"], config["__class__"]
        config["timestep_spacing"], config["steps_offset"] = "linspace", 0  # unused: set_timesteps is its own
        if max_timestep is None:
            config["max_timestep"] = num_train_timesteps - 1
        if not 1 <= config["max_timestep"] < num_train_timesteps:
            raise ValueError(f"max_timestep must be in [1, {num_train_timesteps - 1}], got {max_timestep}")
        super().__init__(config)

    def set_timesteps(self, num_inference_steps: int, device=None):
        """t_i = round(t_max (1 − i/n)) for i = 0 … n − 1 (n ≤ t_max distinct timesteps)."""
        t_max = self.config.max_timestep
        if not 1 <= num_inference_steps <= t_max:
            raise ValueError(f"num_inference_steps must be in [1, max_timestep={t_max}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        self._set_chain(np.round(t_max * (1 - np.arange(num_inference_steps) / num_inference_steps)).astype(np.int64),
                        device)

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if k not in ("timestep_spacing", "steps_offset")}

    def consistency(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """f_θ(x_t, t) for one timestep shared by the batch (unclipped), from the chain's precomputed
        coefficients as the other schedulers' ``step`` (no tensor indexing on the sampling path)."""
        c_skip, c_out = boundary_coefficients(int(timestep), self.config.timestep_scaling, self.config.sigma_data)
        return torch.add(sample * c_skip, self._predict_x0(model_output, sample, self._lookup(timestep)), alpha=c_out)

    def step(self, model_output, timestep, sample, generator=None, noise=None, return_dict=True) -> SchedulerOutput:
        """x̂_0 = clip(f_θ(x_t, t)), re-noised to the next timestep of the chain unless this is the last
        (z drawn from ``generator``, or given as ``noise``)."""
        if generator is not None and noise is not None:
            raise ValueError("pass either generator or noise, not both")
        c = self._lookup(timestep)
        pred_x0 = self._clip(self.consistency(model_output, timestep, sample))
        if self.previous_timestep(timestep) < 0:
            return SchedulerOutput(pred_x0, pred_x0)
        if noise is None:
            noise = randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)
        prev_sample = torch.add(pred_x0 * c.sqrt_alpha_prod_prev, noise, alpha=c.one_minus_alpha_prod_prev ** 0.5)
        return SchedulerOutput(prev_sample, pred_x0)
