"""The keys a run config may hold, section by section, with their types; defaults live in ``configs/``.

Each recipe (``training.recipes``) has its sections. A policy's ``policy`` is ``DiffusionPolicyConfig``,
its ``eval`` is ``RunnerConfig`` (less ``obs_type``, which the task decides); an image DDPM's ``model`` is
``ImageDiffusionConfig`` (``model.unet``: ``UNet2DConfig``). ``ema`` is ``EMAModel``'s keyword arguments;
the other sections are the dataclasses below. ``unknown_config_keys`` finds what none of them reads, e.g. a
typo added with ``+training.sed=1``.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, fields

from dpstack.diffusion.ema import EMAModel
from dpstack.evaluation.runner import RunnerConfig
from dpstack.generative.autoencoder import AutoencoderConfig
from dpstack.generative.image_diffusion import ImageDiffusionConfig
from dpstack.generative.latent_diffusion import TextToImageConfig
from dpstack.generative.language_models import LanguageModelConfig
from dpstack.generative.transformer import TransformerConfig
from dpstack.generative.unet2d import UNet2DConfig
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig
from dpstack.policy.distillation import ConsistencyDistillationConfig
from dpstack.training.recipes import recipe_name


@dataclass
class DatasetSection:
    seed: int
    val_ratio: float
    max_train_episodes: int | None
    mirror: bool
    align_to_goal: bool
    extra_stores: list[str] | None  # replay buffers of more training episodes (e.g. datasets.rollouts)


@dataclass
class TaskSection:
    name: str
    obs_type: str
    obs_dim: int
    action_dim: int
    dataset: DatasetSection


@dataclass
class TrainingSection:
    device: str
    seed: int
    num_epochs: int
    max_train_steps: int | None
    batch_size: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    lr_warmup_steps: int
    val_every: int
    rollout_every: int
    checkpoint_every: int
    resume: bool
    num_threads: int | None
    log_every: int
    progress: bool
    grad_clip_norm: float | None  # clip the global gradient norm (null: no clipping; the norm is logged)
    bf16_autocast: bool           # bfloat16 autocast of the forward pass
    num_workers: int              # DataLoader worker processes (0: gather in the training process)
    init_checkpoint: str | None   # fine-tune: start from this policy's weights and normalizer


@dataclass
class ImageTaskSection:
    name: str
    split_scheme: str            # test_split (9k / 1k of the 10k test digits) or official (60k / 10k)
    max_train_items: int | None  # the first n training digits (null: all)
    max_val_items: int | None    # the first n held-out digits for the validation loss (null: all)


@dataclass
class ImageEvalSection:  # the in-training evaluation; python -m dpstack.generative.evaluate is the full one
    n_bpd: int
    n_samples: int
    sampler: str
    steps: int | None
    eta: float
    seed: int


@dataclass
class TextToImageEvalSection:    # the in-training evaluation; python -m dpstack.generative.txt2img_eval does sweeps
    n_samples: int               # samples per prompt split (seen / held-out paraphrases)
    guidance: float              # classifier-free guidance scale w
    sampler: str
    steps: int | None
    eta: float
    seed: int


@dataclass
class TextTaskSection:
    name: str
    corpus: str | None           # a text file to train on instead of Tiny Shakespeare (null: the corpus)
    stride: int | None           # characters between window starts (null: block_size, non-overlapping)
    max_train_items: int | None
    max_val_items: int | None


@dataclass
class TextEvalSection:
    n_windows: int               # held-out windows for bits/char
    n_t: int                     # t samples per window for the masked model's bound
    sample_prompt: str
    sample_length: int
    sample_steps: int            # masked model's unmasking steps (the AR model takes one per character)


@dataclass
class CheckpointSection:
    topk: int
    monitor: str
    mode: str  # max: higher is better (scores); min: lower is better (bits/dim, bits/char)


@dataclass
class LoggingSection:
    mode: str
    project: str
    name: str | None
    group: str | None
    tags: list[str]
    id: str | None


def _keys(schema) -> set[str]:
    return {f.name for f in fields(schema)}


TOP_LEVEL_KEYS = {"recipe", "name", "task_name", "data_root", "allow_download"}
RECIPE_TOP_LEVEL_KEYS = {"text_to_image": {"autoencoder_checkpoint"}}
A_RUN_CONFIG = "a run config"  # a section that is a whole run config of another recipe (a prerequisite stage)
EMA_KEYS = {name for name in inspect.signature(EMAModel.__init__).parameters if name not in ("self", "model")}
COMMON_SECTIONS = {"training": TrainingSection, "ema": EMA_KEYS, "checkpoint": CheckpointSection,
                   "logging": LoggingSection}
POLICY_EVAL_KEYS = _keys(RunnerConfig) - {"obs_type"}
RECIPE_SECTIONS = {
    "policy": {"task": TaskSection, "policy": DiffusionPolicyConfig, "eval": POLICY_EVAL_KEYS, **COMMON_SECTIONS},
    "consistency_distillation": {"task": TaskSection, "distillation": ConsistencyDistillationConfig,
                                 "eval": POLICY_EVAL_KEYS, **COMMON_SECTIONS},
    "image_diffusion": {"task": ImageTaskSection, "model": ImageDiffusionConfig, "eval": ImageEvalSection,
                        **COMMON_SECTIONS},
    "language_model": {"task": TextTaskSection, "model": LanguageModelConfig, "eval": TextEvalSection,
                       **COMMON_SECTIONS},
    "autoencoder": {"task": ImageTaskSection, "model": AutoencoderConfig, **COMMON_SECTIONS},
    "text_to_image": {"task": ImageTaskSection, "model": TextToImageConfig, "eval": TextToImageEvalSection,
                      "autoencoder": A_RUN_CONFIG, **COMMON_SECTIONS},
}
RECIPE_NESTED = {"policy": {("task", "dataset"): DatasetSection},
                 "consistency_distillation": {("task", "dataset"): DatasetSection},
                 "image_diffusion": {("model", "unet"): UNet2DConfig},
                 "language_model": {("model", "transformer"): TransformerConfig}, "autoencoder": {},
                 "text_to_image": {("model", "unet"): UNet2DConfig, ("model", "text_encoder"): TransformerConfig}}


def _unknown(values: dict, allowed: set[str], prefix: str) -> list[str]:
    problems = []
    for key in sorted(set(values) - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (valid: {', '.join(sorted(allowed))})"
        problems.append(f"unknown key {prefix}{key}{hint}")
    return problems


def unknown_config_keys(config: dict) -> list[str]:
    """One message per key of ``config`` (a plain dict, hydra's own section removed) that no code reads."""
    sections, nested_sections = RECIPE_SECTIONS[recipe_name(config)], RECIPE_NESTED[recipe_name(config)]
    allowed = TOP_LEVEL_KEYS | RECIPE_TOP_LEVEL_KEYS.get(recipe_name(config), set()) | set(sections)
    problems = _unknown({k: v for k, v in config.items() if k != "hydra"}, allowed, "")
    for section, schema in sections.items():
        values = config.get(section)
        if not isinstance(values, dict):
            continue
        if schema == A_RUN_CONFIG:  # validated as its own run (training.config)
            continue
        allowed = schema if isinstance(schema, set) else _keys(schema)
        problems += _unknown(values, allowed, f"{section}.")
        for (parent, child), nested in nested_sections.items():
            if parent == section and isinstance(values.get(child), dict):
                problems += _unknown(values[child], _keys(nested), f"{section}.{child}.")
    return problems
