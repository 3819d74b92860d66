"""Diffusion Policy (Chi et al. 2023): actions A_t = (a_t, …, a_{t+T−1}) denoised by a 1-D U-Net
conditioned on the last n_obs_steps observations.

Training (Ho et al. 2020, L_simple): k ~ U{0, …, K−1}, ε ~ N(0, I),
    A^k = √ᾱ_k A⁰ + √(1 − ᾱ_k) ε,   L = ‖target − f_θ(A^k, k, enc(O_t))‖²
with target ε, A⁰ or v per ``prediction_type``. Inference runs the reverse chain of the
scheduler (DDPM or DDIM, respaced to ``num_inference_steps``) from A^K ~ N(0, τ² I) (τ = ``init_noise_scale``,
the sampling temperature, 1 by default) and executes actions ``n_obs_steps − 1 … n_obs_steps − 1 + n_action_steps − 1``
of the denoised sequence. Low-dim and image policies differ only in their observation encoder; an image policy may
add a training-only loss that reads the block's keypoints from its image feature (``aux_keypoint_weight``).
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from dpstack.datasets.normalizer import LinearNormalizer
from dpstack.diffusion.consistency import ConsistencyScheduler
from dpstack.diffusion.noise import Generators, randn
from dpstack.diffusion.schedulers import DDIMScheduler, DDPMScheduler, spaced_timesteps
from dpstack.policy.obs_encoders import build_obs_encoder
from dpstack.policy.unet1d import ConditionalUnet1D, stage_block_counts

SAMPLERS = ("ddpm", "ddim", "consistency")  # consistency: a distilled policy (policy.distillation)
OBS_TYPES = ("lowdim", "image")


@dataclass
class DiffusionPolicyConfig:
    """Everything that defines a policy's architecture and sampling (a checkpoint stores it)."""

    obs_type: str = "lowdim"
    obs_dim: int = 20  # low-dim observation size per step
    action_dim: int = 2
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 256
    blocks_per_level: int | tuple[int, ...] = 2  # residual blocks per U-Net level and in the middle (the paper: 2),
    # or one count per stage: down levels, middle, up levels (unet1d.stage_block_counts)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    cond_noise_std: float = 0.0  # σ of training-only noise on the condition (normalised units); 0 = off
    sampler: str = "ddpm"
    num_inference_steps: int = 100
    consistency_max_timestep: int | None = None  # sampler consistency: the noisiest timestep (None: K − 1)
    ddim_steps_offset: int = 0  # sampler ddim: shift the chain up, e.g. 40 → DDIM-2 at t = 90, 40 (a progressive student)
    init_noise_scale: float = 1.0  # sampling temperature τ: the reverse chain starts from A^K ~ N(0, τ² I)
    image_encoder: dict = field(default_factory=dict)  # image policies: see policy.obs_encoders
    aux_keypoint_weight: float = 0.0  # image policies: λ of the training-only keypoint loss (compute_loss); 0 = off
    aux_keypoint_dim: int = 18  # values it predicts per observation step (Push-T: the block's 9 keypoints, x and y)

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if not isinstance(self.blocks_per_level, (int, str)) and isinstance(self.blocks_per_level, Sequence):
            self.blocks_per_level = tuple(self.blocks_per_level)  # a list from YAML or a checkpoint
        problems = []
        if self.obs_type not in OBS_TYPES:
            problems.append(f"obs_type must be one of {OBS_TYPES}, got {self.obs_type!r}")
        if not 0.0 <= self.cond_noise_std < float("inf"):
            problems.append(f"cond_noise_std must be a finite number ≥ 0, got {self.cond_noise_std!r}")
        if not 0.0 <= self.aux_keypoint_weight < float("inf"):
            problems.append(f"aux_keypoint_weight must be a finite number ≥ 0, got {self.aux_keypoint_weight!r}")
        if self.aux_keypoint_weight > 0 and self.obs_type != "image":
            problems.append("aux_keypoint_weight > 0 needs obs_type image (a low-dim policy already sees the keypoints)")
        if self.aux_keypoint_dim < 1:
            problems.append(f"aux_keypoint_dim must be ≥ 1, got {self.aux_keypoint_dim}")
        if not 0.0 < self.init_noise_scale < float("inf"):
            problems.append(f"init_noise_scale must be a finite number > 0, got {self.init_noise_scale!r}")
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            problems.append(f"num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}]")
        if self.consistency_max_timestep is not None and not 1 <= self.consistency_max_timestep < self.num_train_timesteps:
            problems.append(f"consistency_max_timestep must be in [1, num_train_timesteps − 1], "
                            f"got {self.consistency_max_timestep}")
        if self.ddim_steps_offset and 1 <= self.num_inference_steps <= self.num_train_timesteps:
            first = int(spaced_timesteps(self.num_train_timesteps, self.num_inference_steps, "leading",
                                         self.ddim_steps_offset)[0])
            if not 0 <= first < self.num_train_timesteps:
                problems.append(f"ddim_steps_offset={self.ddim_steps_offset} puts DDIM-{self.num_inference_steps}'s first "
                                f"timestep at {first}, outside [0, {self.num_train_timesteps - 1}]; "
                                f"lower the offset or the number of steps")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            problems.append(f"n_obs_steps − 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
                            f"exceeds horizon {self.horizon}")
        if self.horizon % 2 ** (len(self.down_dims) - 1):
            problems.append(f"horizon {self.horizon} must be a multiple of 2^(len(down_dims)−1)")
        try:
            stage_block_counts(self.blocks_per_level, len(self.down_dims))
        except ValueError as error:
            problems.append(str(error))
        if any(d % self.n_groups for d in self.down_dims):
            problems.append(f"every down_dims entry must be divisible by n_groups={self.n_groups}")
        if problems:
            raise ValueError("invalid policy config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "DiffusionPolicyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown policy config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["down_dims"] = list(self.down_dims)
        if isinstance(self.blocks_per_level, tuple):
            values["blocks_per_level"] = list(self.blocks_per_level)
        return values


INFERENCE_SETTINGS = ("sampler", "num_inference_steps", "n_action_steps", "ddim_steps_offset", "init_noise_scale")


def with_inference_settings(config: DiffusionPolicyConfig, **changes) -> DiffusionPolicyConfig:
    """``config`` with inference-time settings changed, validated: ``sampler``, ``num_inference_steps``
    (e.g. DDIM-10 for fast control), ``n_action_steps`` (how many actions to execute per chunk) or
    ``ddim_steps_offset`` (DDIM's timesteps shifted up, e.g. DDIM-2 at 90, 40 with 40) or ``init_noise_scale``
    (the sampling temperature τ)."""
    if not set(changes) <= set(INFERENCE_SETTINGS):
        raise ValueError(f"only {list(INFERENCE_SETTINGS)} can change after training, got {sorted(changes)}")
    return DiffusionPolicyConfig.from_dict(config.to_dict() | changes)


class DiffusionUnetPolicy(nn.Module):
    """``compute_loss(batch)`` for training, ``predict_action(obs)`` for control, ``reset()`` between episodes."""

    def __init__(self, config: DiffusionPolicyConfig, normalizer: LinearNormalizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.normalizer = normalizer if normalizer is not None else LinearNormalizer()
        self.obs_encoder = build_obs_encoder(config)
        self.model = ConditionalUnet1D(
            action_dim=config.action_dim,
            global_cond_dim=self.obs_encoder.output_dim * config.n_obs_steps,
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            diffusion_step_embed_dim=config.diffusion_step_embed_dim,
            blocks_per_level=config.blocks_per_level,
        )
        self.aux_keypoint_head = None
        if config.aux_keypoint_weight > 0:  # training-only: the image feature → the block's keypoints
            self.aux_keypoint_head = nn.Linear(self.obs_encoder.image_feature_dim, config.aux_keypoint_dim)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            variance_type="fixed_small", clip_sample=config.clip_sample, prediction_type=config.prediction_type)
        self.inference_scheduler = self._make_inference_scheduler()

    @property
    def device(self) -> torch.device:
        """Where the policy's tensors live (also after ``optimize_for_inference`` froze the U-Net)."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def reset(self) -> None:
        """Policies here are stateless between calls; the executor keeps the history."""

    def reconfigure(self, **changes) -> None:
        """Change inference-time settings without retraining (see ``with_inference_settings``)."""
        self.config = with_inference_settings(self.config, **changes)
        self.inference_scheduler = self._make_inference_scheduler()

    def _make_inference_scheduler(self):
        config = self.config
        scheduler_args = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                              clip_sample=config.clip_sample, prediction_type=config.prediction_type)
        if config.sampler == "ddpm":
            scheduler = DDPMScheduler(variance_type="fixed_small", **scheduler_args)
        elif config.sampler == "ddim":
            scheduler = DDIMScheduler(steps_offset=config.ddim_steps_offset, **scheduler_args)
        else:
            scheduler = ConsistencyScheduler(max_timestep=config.consistency_max_timestep, **scheduler_args)
        scheduler.set_timesteps(config.num_inference_steps)
        return scheduler

    def optimize_for_inference(self) -> "DiffusionUnetPolicy":
        """Replace the U-Net by a frozen TorchScript trace of itself: identical outputs for any batch
        size, about half the per-step overhead at batch 1 on a CPU. The policy is inference-only
        afterwards (it can no longer be trained or saved as a checkpoint)."""
        self.eval()
        cond_dim = self.obs_encoder.output_dim * self.config.n_obs_steps
        example = (torch.zeros(1, self.config.horizon, self.config.action_dim, device=self.device),
                   torch.tensor(0, device=self.device), torch.zeros(1, cond_dim, device=self.device))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated in favour of torch.compile, which did not speed up batch-1
            # sampling on CPU here (BENCHMARKS.md); tracing still works and halves the latency.
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.freeze(torch.jit.trace(self.model, example))
        return self

    # --- conditioning ------------------------------------------------------------------
    def _step_features(self, obs) -> torch.Tensor:
        """enc(o_s) for the first n_obs_steps steps, normalised (only those steps, not the whole horizon),
        each encoded by the shared encoder: (B · n_obs_steps, encoder output_dim)."""
        steps = self.config.n_obs_steps
        obs = obs if isinstance(obs, dict) else {"obs": obs}
        obs = self.normalizer.normalize({k: v[:, :steps] for k, v in obs.items()})
        batch = next(iter(obs.values())).shape[0]
        return self.obs_encoder({k: v.reshape(batch * steps, *v.shape[2:]) for k, v in obs.items()})

    def _condition(self, features: torch.Tensor) -> torch.Tensor:
        """enc(o_{t−To+1}) ‖ … ‖ enc(o_t) from ``_step_features``: the U-Net's condition, (B, n_obs_steps · output_dim)."""
        return features.reshape(-1, self.config.n_obs_steps * features.shape[-1])

    def _global_condition(self, obs) -> torch.Tensor:
        return self._condition(self._step_features(obs))

    def _aux_keypoint_loss(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        """‖W f_img(o_s) + b − norm(k_s)‖² over the observation steps s: the image feature must hold the block's
        keypoints k_s linearly (training-only; the policy never reads them at inference)."""
        if "aux_keypoints" not in batch:
            raise ValueError("policy.aux_keypoint_weight > 0 needs batches with 'aux_keypoints' (B, T, "
                             f"{self.config.aux_keypoint_dim}); the Push-T image dataset adds them with keypoint_targets=True")
        steps = self.config.n_obs_steps
        targets = self.normalizer["aux_keypoints"].normalize(batch["aux_keypoints"][:, :steps])
        predicted = self.aux_keypoint_head(features[:, :self.obs_encoder.image_feature_dim])
        return F.mse_loss(predicted, targets.reshape(predicted.shape))

    # --- training ----------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple over a batch ``{"obs": ..., "action": (B, T, Da)}``. With ``cond_noise_std`` σ > 0 the
        condition is perturbed, c̃ = enc(O_t) + σ ξ with ξ ~ N(0, I) (for low-dim policies: noise on the
        normalised observations), so the policy also sees states slightly off the demonstrations. With
        ``aux_keypoint_weight`` λ > 0: L = L_simple + λ L_keypoints (``_aux_keypoint_loss``)."""
        features = self._step_features(batch["obs"])
        cond = self._condition(features)
        if self.config.cond_noise_std > 0:
            cond = cond + self.config.cond_noise_std * torch.randn(cond.shape, generator=generator, device=cond.device)
        actions = self.normalizer["action"].normalize(batch["action"])
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        steps = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],),
                              generator=generator, device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, steps)
        prediction = self.model(noisy, steps, cond)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = actions
        else:
            target = self.noise_scheduler.get_velocity(actions, noise, steps)
        loss = F.mse_loss(prediction, target)
        if self.aux_keypoint_head is not None:
            loss = loss + self.config.aux_keypoint_weight * self._aux_keypoint_loss(features, batch)
        return loss

    # --- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(self, cond: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Run the reverse chain from A^K = τ ξ, ξ ~ N(0, I) (τ = ``init_noise_scale``, 1 by default); returns
        normalized (B, T, Da). ``generator``: one, or one per row (then a row's sample does not depend on the rest
        of the batch)."""
        shape = (cond.shape[0], self.config.horizon, self.config.action_dim)
        sample = self.config.init_noise_scale * randn(shape, generator, device=cond.device)
        scheduler = self.inference_scheduler
        for t in scheduler.timesteps:
            sample = scheduler.step(self.model(sample, t, cond), t, sample, generator=generator).prev_sample
        return sample

    @torch.no_grad()
    def predict_action(self, obs: dict, generator: Generators = None) -> dict[str, torch.Tensor]:
        """``obs``: ``{"obs": (B, To, D)}`` (low-dim) or ``{"image": (B, To, 3, H, W), "agent_pos": (B, To, 2)}``.

        Returns ``{"action": (B, n_action_steps, Da), "action_pred": (B, horizon, Da)}`` in env units.
        """
        cond = self._global_condition(obs)
        action_pred = self.normalizer["action"].unnormalize(self.sample_actions(cond, generator))
        start = self.config.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.config.n_action_steps], "action_pred": action_pred}
