"""DDPM and DDIM schedulers with the diffusers interface (``set_timesteps`` / ``timesteps`` / ``step`` / ``add_noise``).

All per-timestep coefficients of the current chain are precomputed in float64 and stored as Python floats
when the chain is set, so ``step`` does a dictionary lookup and a handful of fused tensor ops: no tensor
indexing, no ``nonzero`` and no host-device sync (timesteps stay on the CPU unless a device is requested).
"""
import math
from typing import NamedTuple

import numpy as np
import torch

from .gaussian import PREDICTION_TYPES, VARIANCE_TYPES, dynamic_threshold, q_sample, velocity
from .noise import randn
from .schedules import NoiseSchedule, make_betas, transition_coefficients

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class SchedulerOutput(NamedTuple):
    """Result of ``step``: x_{t−1} and the x̂_0 it was built from (a tuple, so ``out[0]`` works as in diffusers)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class SchedulerConfig(dict):
    """Constructor arguments as a plain, serialisable dict that also allows ``config.name`` access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class StepCoefficients(NamedTuple):
    """Python-float coefficients of one reverse step t → prev (ᾱ = ᾱ_t, ᾱ' = ᾱ_prev, β = 1 − ᾱ/ᾱ')."""

    sqrt_alpha_prod: float  # √ᾱ
    sqrt_one_minus_alpha_prod: float  # √(1 − ᾱ)
    sqrt_recip_alpha_prod: float  # 1/√ᾱ
    sqrt_recipm1_alpha_prod: float  # √(1/ᾱ − 1)
    posterior_coef_x0: float  # √ᾱ' β/(1 − ᾱ)
    posterior_coef_xt: float  # √(ᾱ/ᾱ') (1 − ᾱ')/(1 − ᾱ)
    posterior_variance: float  # β̃ = β (1 − ᾱ')/(1 − ᾱ)
    log_posterior_variance: float  # log max(β̃, 1e-20)
    beta: float  # β
    sqrt_alpha_prod_prev: float  # √ᾱ'
    one_minus_alpha_prod_prev: float  # 1 − ᾱ'


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str, steps_offset: int = 0):
    """Descending int64 timesteps of a respaced chain (Lin et al. 2023, Table 2 names), as diffusers builds them."""
    if spacing == "linspace":
        timesteps = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1]
    elif spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        timesteps = (np.arange(num_inference_steps) * ratio).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_inference_steps
        timesteps = np.round(np.arange(num_train_timesteps, 0, -ratio)) - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return timesteps.astype(np.int64)


class _Scheduler:
    """Shared machinery: β table, timestep chain, coefficient table, forward process and serialisation."""

    order = 1
    init_noise_sigma = 1.0
    final_alpha_cumprod = 1.0  # ᾱ used as "previous" of the last step

    def __init__(self, config: dict):
        if config["trained_betas"] is not None:
            config["trained_betas"] = [float(b) for b in config["trained_betas"]]
            if len(config["trained_betas"]) != config["num_train_timesteps"]:
                raise ValueError("trained_betas must have num_train_timesteps entries")
        self.config = SchedulerConfig(config)
        if self.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
        if self.config.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}")
        betas = self.config.trained_betas
        if betas is None:
            betas = make_betas(self.config.beta_schedule, self.config.num_train_timesteps,
                               self.config.beta_start, self.config.beta_end)
        self.schedule = NoiseSchedule(torch.as_tensor(betas, dtype=torch.float64))
        self.betas = self.schedule.betas.float()
        self.alphas = self.schedule.alphas.float()
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        self.num_inference_steps = None
        self._chain_cache = {}
        self._set_chain(np.arange(self.config.num_train_timesteps)[::-1].astype(np.int64))

    def _set_chain(self, timesteps: np.ndarray, device=None):
        """Store the descending chain; its StepCoefficients (prev = next entry) are built once per chain and cached."""
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)
        key = timesteps.tobytes()
        if key not in self._chain_cache:
            self._chain_cache[key] = self._build_chain(timesteps)
        self._coefficients, self._previous = self._chain_cache[key]

    def _build_chain(self, timesteps: np.ndarray):
        index = torch.from_numpy(timesteps)
        ac = self.schedule.alphas_cumprod
        ac_prev = torch.cat([ac[index[1:]], ac.new_tensor([self.final_alpha_cumprod])])
        c = transition_coefficients(ac[index], ac_prev)
        columns = [
            c["sqrt_alphas_cumprod"], c["sqrt_one_minus_alphas_cumprod"], c["sqrt_recip_alphas_cumprod"],
            c["sqrt_recipm1_alphas_cumprod"], c["posterior_mean_coef1"], c["posterior_mean_coef2"],
            c["posterior_variance"], c["posterior_variance"].clamp(min=1e-20).log(), c["betas"],
            c["sqrt_alphas_cumprod_prev"], 1 - c["alphas_cumprod_prev"],
        ]
        rows = torch.stack(columns, dim=1).tolist()
        coefficients = {t: StepCoefficients(*row) for t, row in zip(timesteps.tolist(), rows)}
        return coefficients, dict(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1]))

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Respace the chain to ``num_inference_steps`` steps using ``config.timestep_spacing``."""
        if num_inference_steps > self.config.num_train_timesteps:
            raise ValueError("num_inference_steps cannot exceed num_train_timesteps")
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config.num_train_timesteps, num_inference_steps,
                                     self.config.timestep_spacing, self.config.steps_offset)
        if timesteps[0] >= self.config.num_train_timesteps:
            raise ValueError(f"steps_offset={self.config.steps_offset} pushes timestep {timesteps[0]} past the chain")
        self._set_chain(timesteps, device)

    def previous_timestep(self, timestep) -> int:
        """The timestep that follows ``timestep`` in the current chain (−1 after the last one)."""
        return self._previous[int(timestep)]

    def _lookup(self, timestep) -> StepCoefficients:
        try:
            return self._coefficients[int(timestep)]
        except KeyError:
            raise ValueError(f"timestep {int(timestep)} is not in scheduler.timesteps") from None

    def _predict_x0(self, model_output, sample, c: StepCoefficients) -> torch.Tensor:
        """x̂_0 from ε (√(1/ᾱ) x_t − √(1/ᾱ − 1) ε), from v (√ᾱ x_t − √(1 − ᾱ) v) or directly."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample.mul(c.sqrt_recip_alpha_prod).sub_(model_output, alpha=c.sqrt_recipm1_alpha_prod)
        if kind == "v_prediction":
            return sample.mul(c.sqrt_alpha_prod).sub_(model_output, alpha=c.sqrt_one_minus_alpha_prod)
        return model_output

    def _clip(self, pred_x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding if enabled, else clamp to ±clip_sample_range if ``clip_sample``."""
        cfg = self.config
        if cfg.thresholding:
            return dynamic_threshold(pred_x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return pred_x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return pred_x0

    @staticmethod
    def _noise(sample: torch.Tensor, generator) -> torch.Tensor:
        """z ~ N(0, I) from the generator (or one generator per row), on the sample's device."""
        return randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """Forward process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at per-sample training timesteps."""
        return q_sample(self.schedule, original_samples, timesteps, noise)

    def get_velocity(self, sample, noise, timesteps) -> torch.Tensor:
        """v-prediction target v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."""
        return velocity(self.schedule, sample, noise, timesteps)

    def scale_model_input(self, sample, timestep=None) -> torch.Tensor:
        """Identity (DDPM/DDIM inputs are not rescaled); kept for interchangeability with diffusers."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def to_dict(self) -> dict:
        """Serialisable description: the class name plus the constructor arguments."""
        return {"_class_name": type(self).__name__, **self.config}

    @classmethod
    def from_dict(cls, config: dict):
        """Rebuild from ``to_dict()`` output (keys starting with ``_`` are ignored)."""
        return cls(**{k: v for k, v in config.items() if not k.startswith("_")})

    from_config = from_dict


class DDPMScheduler(_Scheduler):
    """Ancestral sampler of Ho et al. (2020); respaced chains follow Nichol & Dhariwal (2021):
    x_{t'} = μ̃(x_t, x̂_0) + σ z with β = 1 − ᾱ_t/ᾱ_{t'} for the consecutive chain entries t → t'."""

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
                 thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
                 timestep_spacing="leading", steps_offset=0):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}")
        config = dict(locals())
        del config["self"], config["__class__"]
        super().__init__(config)
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Respace to ``num_inference_steps`` steps, or use a custom descending ``timesteps`` list."""
        if timesteps is None:
            return super().set_timesteps(num_inference_steps, device)
        timesteps = np.asarray(timesteps, dtype=np.int64)
        if np.any(np.diff(timesteps) >= 0) or timesteps[0] >= self.config.num_train_timesteps:
            raise ValueError("custom timesteps must be strictly descending and below num_train_timesteps")
        self.num_inference_steps = len(timesteps)
        self._set_chain(timesteps, device)

    def _std(self, c: StepCoefficients, predicted_variance):
        """σ_t: √β̃ (fixed_small), √β (fixed_large), √output (learned), exp(½[v log β + (1 − v) log β̃]) (learned_range)."""
        kind = self.variance_type
        if kind in ("fixed_small", "fixed_small_log"):
            return math.exp(0.5 * c.log_posterior_variance)
        if kind in ("fixed_large", "fixed_large_log"):
            return math.sqrt(c.beta)
        if kind == "learned":
            return predicted_variance.sqrt()
        frac = (predicted_variance + 1) / 2
        return torch.exp(0.5 * (frac * math.log(c.beta) + (1 - frac) * c.log_posterior_variance))

    def step(self, model_output, timestep, sample, generator=None, return_dict=True) -> SchedulerOutput:
        """x_{t'} = μ̃_t(x_t, x̂_0) + σ_t z with z ~ N(0, I) drawn except at the chain's last step.

        With a learned variance the output carries (prediction, variance) along dim 1. ``return_dict`` is
        accepted for diffusers compatibility; the result is a NamedTuple, which is also a tuple.
        """
        c = self._lookup(timestep)
        predicted_variance = None
        if self.variance_type in ("learned", "learned_range") and model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = model_output.split(sample.shape[1], dim=1)
        pred_x0 = self._clip(self._predict_x0(model_output, sample, c))
        prev_sample = sample.mul(c.posterior_coef_xt).add_(pred_x0, alpha=c.posterior_coef_x0)
        # The chain's last step returns the mean: also when a respaced chain ends above t = 0 ("trailing"
        # spacing ends at T/n − 1; diffusers adds noise there, diffusers#9261).
        if self.previous_timestep(timestep) >= 0:
            std = self._std(c, predicted_variance)
            noise = self._noise(sample, generator)
            prev_sample = prev_sample.add_(noise, alpha=std) if isinstance(std, float) else prev_sample + std * noise
        return SchedulerOutput(prev_sample, pred_x0)


class DDIMScheduler(_Scheduler):
    """Song et al. (2021): x_{t'} = √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z, σ = η √β̃ (η = 0: deterministic)."""

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                 prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                 clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading"):
        config = dict(locals())
        del config["self"], config["__class__"]
        self._set_alpha_to_one = set_alpha_to_one
        super().__init__(config)

    @property
    def final_alpha_cumprod(self) -> float:
        """ᾱ "before" the last step: 1, or ᾱ_0 when ``set_alpha_to_one`` is False."""
        return 1.0 if self._set_alpha_to_one else float(self.schedule.alphas_cumprod[0])

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True) -> SchedulerOutput:
        """One DDIM update (Song et al. eq. 12); ε̂ is re-derived from the clipped x̂_0 if ``use_clipped_model_output``."""
        if generator is not None and variance_noise is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        c = self._lookup(timestep)
        pred_x0 = self._predict_x0(model_output, sample, c)
        kind = self.config.prediction_type
        if kind == "epsilon":
            pred_eps = model_output
        elif kind == "v_prediction":
            pred_eps = torch.add(sample * c.sqrt_one_minus_alpha_prod, model_output, alpha=c.sqrt_alpha_prod)
        else:
            pred_eps = torch.add(sample, pred_x0, alpha=-c.sqrt_alpha_prod) / c.sqrt_one_minus_alpha_prod
        pred_x0 = self._clip(pred_x0)
        if use_clipped_model_output:
            pred_eps = torch.add(sample, pred_x0, alpha=-c.sqrt_alpha_prod) / c.sqrt_one_minus_alpha_prod
        std = eta * math.sqrt(c.posterior_variance)
        direction = math.sqrt(max(c.one_minus_alpha_prod_prev - std * std, 0.0))
        prev_sample = torch.add(pred_x0 * c.sqrt_alpha_prod_prev, pred_eps, alpha=direction)
        if eta > 0:
            noise = self._noise(sample, generator) if variance_noise is None else variance_noise
            prev_sample = torch.add(prev_sample, noise, alpha=std)
        return SchedulerOutput(prev_sample, pred_x0)


def scheduler_from_dict(config: dict) -> _Scheduler:
    """Rebuild a DDPM/DDIM scheduler from ``to_dict()`` output using its ``_class_name``."""
    classes = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
    return classes[config["_class_name"]].from_dict(config)
