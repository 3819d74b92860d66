"""What one kind of model brings to the training workspace: its data, its model, its evaluation.

The workspace owns the loop (optimizer, LR schedule, EMA, logging, checkpoints, exact resume) for every
model of the project; a recipe, chosen by the config's top-level ``recipe`` key, supplies the rest:

- ``policy`` (the default): Diffusion Policy on Push-T; evaluation = simulator rollouts.
- ``image_diffusion``: the MNIST image DDPM; evaluation = sample grid, bits/dim, classifier-FID.
- ``language_model``: the character LMs on Tiny Shakespeare (masked diffusion or autoregressive);
  evaluation = held-out bits/char and a sample.

A model only needs ``compute_loss(batch, generator=None)`` and a ``config`` with ``to_dict()``.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

DEFAULT_RECIPE = "policy"


class PolicyRecipe:
    """Diffusion Policy on Push-T (low-dim keypoints or images)."""

    model_section = "policy"
    config_key = "policy_config"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def build_data(self):
        from dpstack.datasets.download import ensure_pusht
        from dpstack.datasets.pusht import PushTImageDataset, PushTLowdimDataset

        cfg, task = self.cfg, self.cfg.task
        zarr_path = ensure_pusht(cfg.data_root, allow_download=bool(cfg.allow_download))
        options = {"mirror": bool(task.dataset.get("mirror", False))}
        dataset_class = PushTLowdimDataset if task.obs_type == "lowdim" else PushTImageDataset
        if task.obs_type == "lowdim":  # validate_config refuses align_to_goal for images
            options["align_to_goal"] = bool(task.dataset.get("align_to_goal", False))
        else:  # only the images the policy conditions on are gathered
            options["n_obs_steps"] = cfg.policy.n_obs_steps
        dataset = dataset_class(zarr_path=zarr_path, horizon=cfg.policy.horizon, pad_before=cfg.policy.n_obs_steps - 1,
                                pad_after=cfg.policy.n_action_steps - 1, seed=task.dataset.seed,
                                val_ratio=task.dataset.val_ratio, max_train_episodes=task.dataset.max_train_episodes,
                                **options)
        return dataset, dataset.get_validation_dataset()

    def build_model(self, dataset):
        from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy

        config = DiffusionPolicyConfig.from_dict(OmegaConf.to_container(self.cfg.policy, resolve=True))
        return DiffusionUnetPolicy(config, dataset.get_normalizer())

    def runner(self):
        from dpstack.evaluation.runner import PushTRunner, RunnerConfig

        values = OmegaConf.to_container(self.cfg.eval, resolve=True)
        values["obs_type"] = "keypoints" if self.cfg.task.obs_type == "lowdim" else "image"
        return PushTRunner(RunnerConfig(**values), self.cfg.policy.n_obs_steps, self.cfg.policy.n_action_steps)

    def evaluate(self, model, epoch: int, step: int, output_dir: Path, logger) -> dict:
        """Rollouts of the EMA policy on the config's seeds; videos to ``media/epoch_EEEE``."""
        from dpstack.policy.executor import torch_predictor

        predict = torch_predictor(model, model.device, episode_seed=self.cfg.training.seed)
        result = self.runner().run(predict, video_dir=output_dir / "media" / f"epoch_{epoch:04d}",
                                   progress=self.cfg.training.progress)
        metrics = result.metrics()
        metrics["test_mean_score"] = metrics["test/mean_score"]
        logger.log_videos(result.videos, step)
        return metrics


class ImageDiffusionRecipe:
    """The MNIST image DDPM (``generative/``)."""

    model_section = "model"
    config_key = "model_config"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def build_data(self):
        from dpstack.datasets.mnist import MNISTDataset

        task = self.cfg.task
        return (MNISTDataset("train", self.cfg.data_root, task.max_train_items, task.split_scheme),
                MNISTDataset("heldout", self.cfg.data_root, task.max_val_items, task.split_scheme))

    def build_model(self, dataset):
        from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig

        config = ImageDiffusionConfig.from_dict(OmegaConf.to_container(self.cfg.model, resolve=True))
        if dataset.image_size != (config.image_size, config.image_size):
            raise ValueError(f"the data's images are {dataset.image_size}, model.image_size={config.image_size}")
        return ImageDiffusion(config)

    def evaluate(self, model, epoch: int, step: int, output_dir: Path, logger) -> dict:
        """A sample grid (PNG, also to wandb), bits/dim on ``eval.n_bpd`` held-out digits and classifier-FID
        of ``eval.n_samples`` samples (``python -m dpstack.generative.evaluate`` does the full-size version)."""
        from dpstack.generative.evaluate import evaluate
        from dpstack.generative.pictures import sample_grid

        settings = self.cfg.eval
        grid = sample_grid(model, output_dir / "media" / f"samples_epoch_{epoch:04d}.png", sampler=settings.sampler,
                           steps=settings.steps, eta=settings.eta, seed=settings.seed)
        logger.log_images({"samples": grid}, step)
        metrics = evaluate(model, settings.n_bpd, settings.n_samples, settings.sampler, settings.steps, settings.eta,
                           seed=settings.seed, root=self.cfg.data_root, progress=self.cfg.training.progress,
                           split_scheme=self.cfg.task.split_scheme)
        (output_dir / f"eval_epoch_{epoch:04d}.json").write_text(json.dumps(metrics, indent=2))
        return {f"test/{key}": value for key, value in metrics.items() if isinstance(value, (int, float))}


class LanguageModelRecipe:
    """The masked-diffusion and autoregressive character LMs (``generative/language_models.py``)."""

    model_section = "model"
    config_key = "model_config"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def build_data(self):
        from dpstack.datasets.text import TextDataset

        task, block = self.cfg.task, self.cfg.model.transformer.block_size
        train = TextDataset("train", block, task.stride, self.cfg.data_root, task.max_train_items, corpus=task.corpus)
        return train, TextDataset("heldout", block, None, self.cfg.data_root, task.max_val_items, train.tokenizer,
                                  corpus=task.corpus)

    def build_model(self, dataset):
        from dpstack.generative.language_models import LanguageModelConfig, build_language_model

        values = OmegaConf.to_container(self.cfg.model, resolve=True)
        values["characters"] = dataset.tokenizer.characters  # the vocabulary travels with the checkpoint
        values["transformer"]["vocab_size"] = dataset.tokenizer.vocab_size
        return build_language_model(LanguageModelConfig.from_dict(values))

    def evaluate(self, model, epoch: int, step: int, output_dir: Path, logger) -> dict:
        """Held-out bits/char on ``eval.n_windows`` windows and a sample written to ``media/``."""
        from dpstack.generative.text import evaluate_bits_per_char, generate_text

        settings = self.cfg.eval
        metrics = evaluate_bits_per_char(model, settings.n_windows, settings.n_t, self.cfg.data_root)
        text = generate_text(model, settings.sample_prompt, settings.sample_length, settings.sample_steps, seed=0)
        sample = output_dir / "media" / f"sample_epoch_{epoch:04d}.txt"
        sample.parent.mkdir(parents=True, exist_ok=True)
        sample.write_text(settings.sample_prompt + text + "\n")
        return {f"test/{key}": value for key, value in metrics.items()}


RECIPES = {"policy": PolicyRecipe, "image_diffusion": ImageDiffusionRecipe, "language_model": LanguageModelRecipe}


def recipe_name(cfg) -> str:
    """The config's recipe (``policy`` for configs written before recipes existed)."""
    name = cfg.get("recipe", DEFAULT_RECIPE) if hasattr(cfg, "get") else DEFAULT_RECIPE
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r} is not one of {sorted(RECIPES)}")
    return name


def make_recipe(cfg: DictConfig):
    return RECIPES[recipe_name(cfg)](cfg)
