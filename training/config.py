"""Checks a run config before any work starts, so a typo fails in a second with a clear message."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dpstack.generative.autoencoder import AutoencoderConfig
from dpstack.generative.image_diffusion import ImageDiffusionConfig
from dpstack.generative.latent_diffusion import TextToImageConfig
from dpstack.generative.language_models import LanguageModelConfig
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig
from dpstack.policy.distillation import ConsistencyDistillationConfig
from dpstack.training.recipes import TextToImageRecipe, recipe_name
from dpstack.training.schema import RECIPE_SECTIONS, unknown_config_keys


MODEL_CONFIGS = {"policy": ("policy", DiffusionPolicyConfig),
                 "consistency_distillation": ("distillation", ConsistencyDistillationConfig),
                 "image_diffusion": ("model", ImageDiffusionConfig),
                 "language_model": ("model", LanguageModelConfig), "autoencoder": ("model", AutoencoderConfig),
                 "text_to_image": ("model", TextToImageConfig)}
# Estimated from the data when a text-to-image run starts (a value in the config would be overwritten).
DERIVED_MODEL_KEYS = ("autoencoder", "latent_scale", "ink_thresholds")


class ConfigError(ValueError):
    """A run config that cannot run; the message lists every problem and names the key to fix."""


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda:0`` when a GPU is visible, else ``cpu``; anything else must exist."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={device} but no CUDA device is available; use training.device=cpu")
    return device


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem found; resolves ``training.device``."""
    try:
        recipe = recipe_name(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    missing = [name for name in RECIPE_SECTIONS[recipe] if name not in cfg]
    if missing:
        raise ConfigError(f"config lacks sections {missing}")
    problems = unknown_config_keys(OmegaConf.to_container(cfg, resolve=False))
    section, config_class = MODEL_CONFIGS[recipe]
    try:
        values = OmegaConf.to_container(cfg[section], resolve=True)
        if recipe == "text_to_image" and not cfg.get("autoencoder_checkpoint") and "autoencoder" in cfg:
            try:  # checked against the autoencoder it will train; that one's own errors come from its stage
                values.setdefault("autoencoder", AutoencoderConfig.from_dict(
                    OmegaConf.to_container(cfg.autoencoder.model, resolve=True)))
            except (TypeError, ValueError):
                pass
        config_class.from_dict(values)
    except (TypeError, ValueError) as error:
        problems.append(str(error))
    if recipe == "policy":
        problems += _policy_problems(cfg)
    if recipe == "text_to_image":
        problems += _text_to_image_problems(cfg)
    tc = cfg.training
    for key in ("num_epochs", "batch_size", "checkpoint_every"):
        if not isinstance(tc[key], int) or tc[key] < 1:
            problems.append(f"training.{key} must be a positive integer, got {tc[key]!r}")
    if not tc.lr > 0:
        problems.append(f"training.lr must be positive, got {tc.lr!r}")
    clip = tc.get("grad_clip_norm")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        problems.append(f"training.grad_clip_norm must be null (no clipping) or a positive number, got {clip!r}")
    if not isinstance(tc.get("num_workers", 0), int) or tc.get("num_workers", 0) < 0:
        problems.append(f"training.num_workers must be an integer ≥ 0, got {tc.get('num_workers')!r}")
    if cfg.checkpoint.get("mode", "max") not in ("max", "min"):
        problems.append(f"checkpoint.mode must be max or min, got {cfg.checkpoint.mode!r}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {problem}" for problem in problems))
    cfg.training.device = resolve_device(str(tc.device))


def _policy_problems(cfg: DictConfig) -> list[str]:
    problems = []
    if cfg.policy.obs_type != cfg.task.obs_type:
        problems.append(f"policy.obs_type={cfg.policy.obs_type} does not match task.obs_type={cfg.task.obs_type}")
    if cfg.task.obs_type != "lowdim" and cfg.task.dataset.get("align_to_goal", False):
        problems.append("task.dataset.align_to_goal is implemented for keypoint observations only (moved "
                        "demonstrations would need re-rendered images): set it to false for an image task")
    if cfg.task.obs_type != "lowdim" and cfg.task.dataset.get("extra_stores"):
        problems.append("task.dataset.extra_stores is implemented for keypoint observations only: remove it")
    for store in cfg.task.dataset.get("extra_stores") or []:
        if not Path(store).exists():
            problems.append(f"task.dataset.extra_stores: {store} does not exist (make it with python -m "
                            "dpstack.datasets.rollouts CKPT STORE)")
    start = cfg.training.get("init_checkpoint")
    if start and not Path(start).is_file():
        problems.append(f"training.init_checkpoint={start} does not exist; give a policy checkpoint or null")
    return problems


def _text_to_image_problems(cfg: DictConfig) -> list[str]:
    problems = [f"model.{key} is set from the trained autoencoder and the data when training starts; remove it "
                "from the config" for key in DERIVED_MODEL_KEYS if key in cfg.model]
    settings, steps_limit = cfg.eval, cfg.model.num_train_timesteps
    if settings.sampler not in ("ddim", "ddpm"):
        problems.append(f"eval.sampler must be ddim or ddpm, got {settings.sampler!r}")
    if settings.steps is not None and not (isinstance(settings.steps, int) and 1 <= settings.steps <= steps_limit):
        problems.append(f"eval.steps must be null (all {steps_limit}) or in 1..{steps_limit}, got {settings.steps!r}")
    if not settings.guidance >= 0:
        problems.append(f"eval.guidance must be ≥ 0, got {settings.guidance!r}")
    if not (isinstance(settings.n_samples, int) and settings.n_samples >= 1):
        problems.append(f"eval.n_samples must be a positive integer, got {settings.n_samples!r}")
    given = cfg.get("autoencoder_checkpoint")
    if given:
        if not Path(given).is_file():
            problems.append(f"autoencoder_checkpoint={given} does not exist; train one with python train.py "
                            "--config-name=mnist_autoencoder, or set it to null to train the stage first")
        return problems
    if cfg.autoencoder.get("recipe") != "autoencoder":
        return problems + [f"autoencoder.recipe must be autoencoder, got {cfg.autoencoder.get('recipe')!r}"]
    try:
        validate_config(TextToImageRecipe(cfg).autoencoder_run_config())
    except ConfigError as error:
        lines = str(error).splitlines()
        problems += [f"autoencoder stage: {line.strip().removeprefix('- ')}" for line in lines[1:] or lines]
    return problems
