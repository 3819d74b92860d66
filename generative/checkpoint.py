"""Load the image model of a training checkpoint (EMA weights, eval mode), refusing other kinds of checkpoint."""
from __future__ import annotations

import os

import torch

from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint
from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig

RECIPE = "image_diffusion"


def load_image_model(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> ImageDiffusion:
    payload = load_checkpoint(path, map_location=device)
    recipe = payload["config"].get("recipe", "policy")
    if recipe != RECIPE or "model_config" not in payload:
        raise CheckpointError(f"checkpoint {path} holds a model of recipe {recipe!r}, not an image DDPM "
                              f"(train one with python train.py --config-name=mnist_ddpm)")
    model = ImageDiffusion(ImageDiffusionConfig.from_dict(payload["model_config"]))
    states = payload["state_dicts"]
    weights = states.get("ema_model") if use_ema and states.get("ema_model") is not None else states["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {error}") from error
    return model.to(device).eval()
