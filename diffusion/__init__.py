"""Shared diffusion core: noise schedules, Gaussian diffusion maths, losses, diffusers-compatible schedulers,
sampling helpers and EMA. Depends only on torch, numpy and the standard library."""
from .consistency import ConsistencyScheduler, boundary_coefficients, consistency_function, ddim_jump
from .ema import EMAModel
from .embedding import SinusoidalStepEmbedding
from .gaussian import (
    ReverseStep,
    dynamic_threshold,
    eps_from_v,
    eps_from_x0,
    p_mean_variance,
    predict_x0,
    prediction_target,
    q_posterior,
    q_sample,
    velocity,
    x0_from_eps,
    x0_from_v,
)
from .losses import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    prior_kl,
    simple_loss,
    vlb_bits_per_dim,
    vlb_term,
)
from .noise import randn
from .sampling import classifier_free_guidance, drop_conditions, sample_loop
from .schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput, scheduler_from_dict
from .schedules import BETA_SCHEDULES, NoiseSchedule, make_betas
