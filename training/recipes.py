"""What one kind of model brings to the training workspace: its data, its model, its evaluation.

The workspace owns the loop (optimizer, LR schedule, EMA, logging, checkpoints, exact resume) for every
model of the project; a recipe, chosen by the config's top-level ``recipe`` key, supplies the rest:

- ``policy`` (the default): Diffusion Policy on Push-T; evaluation = simulator rollouts.
- ``consistency_distillation``: a few-step policy distilled from a trained one; evaluation as ``policy``.
- ``image_diffusion``: the MNIST image DDPM; evaluation = sample grid, bits/dim, classifier-FID.
- ``language_model``: the character LMs on Tiny Shakespeare (masked diffusion or autoregressive);
  evaluation = held-out bits/char and a sample.
- ``autoencoder``: the KL autoencoder of latent diffusion; evaluation = held-out reconstruction error.
- ``text_to_image``: latent text-to-image diffusion; its autoencoder is a prerequisite stage (trained
  first into ``<run>/autoencoder`` unless ``autoencoder_checkpoint`` names one); evaluation = prompt
  accuracy on seen and held-out paraphrases, classifier-FID and a prompts × guidance picture.

A model only needs ``compute_loss(batch, generator=None)`` and a ``config`` with ``to_dict()``. A recipe
may list ``prerequisites(output_dir)``: runs (config, folder) the workspace trains, or resumes, first.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

DEFAULT_RECIPE = "policy"


class PolicyRecipe:
    """Diffusion Policy on Push-T (low-dim keypoints or images)."""

    model_section = "policy"
    config_key = "policy_config"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def policy_shape(self):
        """The section that gives horizon, n_obs_steps and n_action_steps."""
        return self.cfg.policy

    def build_data(self):
        from dpstack.datasets.download import ensure_pusht
        from dpstack.datasets.pusht import PushTImageDataset, PushTLowdimDataset

        cfg, task, shape = self.cfg, self.cfg.task, self.policy_shape()
        zarr_path = ensure_pusht(cfg.data_root, allow_download=bool(cfg.allow_download))
        options = {"mirror": bool(task.dataset.get("mirror", False))}
        dataset_class = PushTLowdimDataset if task.obs_type == "lowdim" else PushTImageDataset
        if task.obs_type == "lowdim":  # validate_config refuses align_to_goal and extra_stores for images
            options["align_to_goal"] = bool(task.dataset.get("align_to_goal", False))
            options["extra_stores"] = list(task.dataset.get("extra_stores") or [])
        else:  # only the images the policy conditions on are gathered
            options["n_obs_steps"] = shape.n_obs_steps
            # targets of the training-only keypoint loss (a distillation section never sets the weight)
            options["keypoint_targets"] = float(cfg[self.model_section].get("aux_keypoint_weight", 0.0)) > 0
        dataset = dataset_class(zarr_path=zarr_path, horizon=shape.horizon, pad_before=shape.n_obs_steps - 1,
                                pad_after=shape.n_action_steps - 1, seed=task.dataset.seed,
                                val_ratio=task.dataset.val_ratio, max_train_episodes=task.dataset.max_train_episodes,
                                **options)
        return dataset, dataset.get_validation_dataset()

    def build_model(self, dataset):
        from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy

        config = DiffusionPolicyConfig.from_dict(OmegaConf.to_container(self.cfg.policy, resolve=True))
        policy = DiffusionUnetPolicy(config, dataset.get_normalizer())
        start = self.cfg.training.get("init_checkpoint")
        return policy if not start else initialized_from(policy, start)

    def runner(self):
        from dpstack.evaluation.runner import PushTRunner, RunnerConfig

        values = OmegaConf.to_container(self.cfg.eval, resolve=True)
        values["obs_type"] = "keypoints" if self.cfg.task.obs_type == "lowdim" else "image"
        shape = self.policy_shape()
        return PushTRunner(RunnerConfig(**values), shape.n_obs_steps, shape.n_action_steps)

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


def initialized_from(policy, checkpoint: str):
    """``policy`` with the weights and the normalizer of the policy in ``checkpoint`` (fine-tuning: the data
    may change, the normalized coordinates the weights were trained in must not)."""
    from dpstack.policy.checkpoint import load_policy

    weights = load_policy(checkpoint).state_dict()
    try:
        policy.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"training.init_checkpoint={checkpoint} holds a policy of another shape than this "
                         f"config's policy section (set the same down_dims, horizon, obs/action dims): {error}") from None
    return policy


class ConsistencyDistillationRecipe(PolicyRecipe):
    """A few-step consistency policy distilled from a trained policy (``policy/distillation.py``); data and
    evaluation as for the teacher's policy, the shape (horizon, observation and action steps) the teacher's."""

    model_section = "distillation"
    DATA_FLAGS = ("mirror", "align_to_goal")

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self._teacher = None

    def teacher(self):
        from dpstack.policy.checkpoint import load_policy

        if self._teacher is None:
            self._teacher = load_policy(self.cfg.distillation.teacher_checkpoint)
        return self._teacher

    def policy_shape(self):
        return self.teacher().config

    def build_data(self):
        """The teacher's demonstrations: a ``task.dataset`` flag (mirror, align_to_goal) left null takes the
        teacher's value from its checkpoint's run config, written into this run's config before it is saved."""
        from dpstack.diffusion.checkpoint_io import load_checkpoint

        dataset = self.cfg.task.dataset
        unset = [flag for flag in self.DATA_FLAGS if dataset.get(flag) is None]
        if unset:
            teacher_data = load_checkpoint(self.cfg.distillation.teacher_checkpoint)["config"]["task"]["dataset"]
            with open_dict(dataset):
                for flag in unset:
                    dataset[flag] = bool(teacher_data.get(flag, False))
        return super().build_data()

    def build_model(self, dataset):
        from dpstack.policy.distillation import ConsistencyStudent

        teacher, settings = self.teacher(), self.cfg.distillation
        if teacher.config.obs_type != self.cfg.task.obs_type:
            raise ValueError(f"the teacher {settings.teacher_checkpoint} observes {teacher.config.obs_type}, "
                             f"task.obs_type is {self.cfg.task.obs_type}: choose the teacher's task")
        blocks = settings.get("student_blocks_per_level")
        blocks = OmegaConf.to_container(blocks) if isinstance(blocks, ListConfig) else blocks
        return ConsistencyStudent(teacher, settings.skip_steps, settings.num_inference_steps, settings.objective, blocks,
                                  settings.get("imitation_states", "noised"))


class MNISTRecipe:
    """The models trained on MNIST digits (training and held-out splits of ``task.split_scheme``)."""

    model_section = "model"
    config_key = "model_config"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def build_data(self):
        from dpstack.datasets.mnist import MNISTDataset

        task = self.cfg.task
        return (MNISTDataset("train", self.cfg.data_root, task.max_train_items, task.split_scheme),
                MNISTDataset("heldout", self.cfg.data_root, task.max_val_items, task.split_scheme))


class ImageDiffusionRecipe(MNISTRecipe):
    """The MNIST image DDPM (``generative/``)."""

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
        metrics = evaluate_bits_per_char(model, settings.n_windows, settings.n_t, self.cfg.data_root,
                                         corpus=self.cfg.task.corpus)
        text = generate_text(model, settings.sample_prompt, settings.sample_length, settings.sample_steps, seed=0)
        sample = output_dir / "media" / f"sample_epoch_{epoch:04d}.txt"
        sample.parent.mkdir(parents=True, exist_ok=True)
        sample.write_text(settings.sample_prompt + text + "\n")
        return {f"test/{key}": value for key, value in metrics.items()}


class AutoencoderRecipe(MNISTRecipe):
    """The KL autoencoder of latent diffusion (``generative/autoencoder.py``)."""

    def build_model(self, dataset):
        from dpstack.generative.autoencoder import AutoencoderConfig, KLAutoencoder

        config = AutoencoderConfig.from_dict(OmegaConf.to_container(self.cfg.model, resolve=True))
        if dataset.image_size != (config.image_size, config.image_size):
            raise ValueError(f"the data's images are {dataset.image_size}, model.image_size={config.image_size}")
        return KLAutoencoder(config)

    def evaluate(self, model, epoch: int, step: int, output_dir: Path, logger) -> dict:
        """Reconstruction error of the held-out digits, and originals above reconstructions (PNG, wandb)."""
        from dpstack.generative.evaluate import heldout_digits
        from dpstack.generative.pictures import save_png, tile

        images, _ = heldout_digits(None, self.cfg.data_root, self.cfg.task.split_scheme)
        metrics = model.reconstruction_metrics(images)
        with torch.no_grad():
            reconstructed = model.decode(model.encode(images[:20].to(model.device))[0]).clamp(-1, 1).cpu()
        picture = save_png(tile(torch.cat([images[:20], reconstructed]), 20, 2),
                           output_dir / "media" / f"reconstructions_epoch_{epoch:04d}.png")
        logger.log_images({"reconstructions": picture}, step)
        return {f"test/{key}": value for key, value in metrics.items()}


class TextToImageRecipe(MNISTRecipe):
    """Latent text-to-image diffusion (``generative/latent_diffusion.py``) over a trained autoencoder."""

    resume_keys = ("autoencoder_checkpoint",)

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.autoencoder_path: Path | None = None

    def autoencoder_run_config(self) -> DictConfig:
        """The ``autoencoder`` section as a run config, with this run's data, device, threads, seed, progress
        and logging mode."""
        stage = OmegaConf.masked_copy(self.cfg.autoencoder, [k for k in self.cfg.autoencoder if k != "hydra"])
        stage.data_root, stage.allow_download, stage.task = self.cfg.data_root, self.cfg.allow_download, self.cfg.task
        for key in ("device", "num_threads", "seed", "progress"):
            stage.training[key] = self.cfg.training[key]
        stage.logging.mode = self.cfg.logging.mode
        return stage

    def prerequisites(self, output_dir: Path) -> list[tuple[DictConfig, Path]]:
        if self.cfg.get("autoencoder_checkpoint"):
            self.autoencoder_path = Path(self.cfg.autoencoder_checkpoint)
            return []
        self.autoencoder_path = Path(output_dir) / "autoencoder" / "checkpoints" / "latest.ckpt"
        return [(self.autoencoder_run_config(), Path(output_dir) / "autoencoder")]

    def build_model(self, dataset):
        """The model around the trained autoencoder, with the latent scale s and the stroke-weight
        thresholds estimated from the training digits."""
        from dpstack.generative.autoencoder import latent_scale
        from dpstack.generative.checkpoint import load_autoencoder
        from dpstack.generative.latent_diffusion import LatentTextToImage, TextToImageConfig
        from dpstack.generative.prompts import ink_thresholds

        autoencoder = load_autoencoder(self.autoencoder_path)
        batch = dataset.finalize_batch(dataset.gather(range(len(dataset))))
        values = OmegaConf.to_container(self.cfg.model, resolve=True)
        values["autoencoder"] = autoencoder.config.to_dict()
        values["unet"]["in_channels"] = autoencoder.config.latent_channels  # a given checkpoint's, not the section's
        values["latent_scale"] = latent_scale(autoencoder, batch["image"], generator=torch.Generator().manual_seed(0))
        values["ink_thresholds"] = ink_thresholds(batch["image"].flatten(1).mean(1), batch["label"])
        model = LatentTextToImage(TextToImageConfig.from_dict(values))
        model.autoencoder.load_state_dict(autoencoder.state_dict())
        return model

    def check_resume(self, payload: dict, model, path: Path) -> None:
        """Refuse to resume over another autoencoder (another latent space): its weights and the values derived
        from it (latent scale, ink thresholds, its config) must be those the run started with."""
        from dpstack.diffusion.checkpoint_io import CheckpointError

        saved_weights = payload["state_dicts"]["model"]
        now = model.autoencoder.state_dict()
        same_weights = all(torch.equal(saved_weights[f"autoencoder.{key}"], value) for key, value in now.items())
        saved = {key: payload["model_config"][key] for key in ("autoencoder", "latent_scale", "ink_thresholds")}
        current = {key: model.config.to_dict()[key] for key in saved}
        if not same_weights or saved != current:
            raise CheckpointError(f"{path} was trained over another autoencoder than {self.autoencoder_path} holds "
                                  "now (a changed autoencoder stage or checkpoint); resume with the autoencoder it "
                                  "started with, or start a new output dir")

    def evaluate(self, model, epoch: int, step: int, output_dir: Path, logger) -> dict:
        """Prompt accuracy (seen and held-out paraphrases) and classifier-FID at ``eval.guidance``, and the
        prompts × guidance picture (PNG, wandb)."""
        from dpstack.generative.txt2img_eval import evaluate_prompts, save_guidance_grid

        settings = self.cfg.eval
        picture = save_guidance_grid(model, output_dir / "media" / f"guidance_epoch_{epoch:04d}.png",
                                     steps=settings.steps, seed=settings.seed)
        logger.log_images({"prompts_by_guidance": picture}, step)
        metrics = evaluate_prompts(model, settings.n_samples, settings.guidance, settings.sampler, settings.steps,
                                   settings.eta, settings.seed, self.cfg.data_root, self.cfg.task.split_scheme,
                                   progress=self.cfg.training.progress)
        (output_dir / f"eval_epoch_{epoch:04d}.json").write_text(json.dumps(metrics, indent=2))
        return {f"test/{key}": value for key, value in metrics.items() if isinstance(value, (int, float))}


RECIPES = {"policy": PolicyRecipe, "consistency_distillation": ConsistencyDistillationRecipe,
           "image_diffusion": ImageDiffusionRecipe, "language_model": LanguageModelRecipe,
           "autoencoder": AutoencoderRecipe, "text_to_image": TextToImageRecipe}


def recipe_name(cfg) -> str:
    """The config's recipe (``policy`` for configs written before recipes existed)."""
    name = cfg.get("recipe", DEFAULT_RECIPE) if hasattr(cfg, "get") else DEFAULT_RECIPE
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r} is not one of {sorted(RECIPES)}")
    return name


def make_recipe(cfg: DictConfig):
    return RECIPES[recipe_name(cfg)](cfg)
