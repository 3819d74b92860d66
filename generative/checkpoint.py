"""Generative-model checkpoints: load a model (EMA weights, eval mode; other kinds refused) and write the
small copy that ``pretrained/`` ships (run config, model config, EMA weights, metrics)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint, load_model, model_weights, save_checkpoint
from dpstack.generative.autoencoder import AutoencoderConfig, KLAutoencoder
from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig
from dpstack.generative.latent_diffusion import LatentTextToImage, TextToImageConfig

RECIPE = "image_diffusion"
SHIPPABLE_RECIPES = ("image_diffusion", "text_to_image", "autoencoder", "language_model")


def load_image_model(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> ImageDiffusion:
    """The image DDPM of a checkpoint (EMA weights, eval mode); other kinds of checkpoint are refused."""
    return load_model(path, RECIPE, lambda values: ImageDiffusion(ImageDiffusionConfig.from_dict(values)), device,
                      use_ema, "(train one with python train.py --config-name=mnist_ddpm)")


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> KLAutoencoder:
    """The KL autoencoder of a checkpoint (EMA weights, eval mode)."""
    return load_model(path, "autoencoder", lambda values: KLAutoencoder(AutoencoderConfig.from_dict(values)), device,
                      True, "(train one with python train.py --config-name=mnist_autoencoder)")


def load_text_to_image(path: str | os.PathLike, device: str | torch.device = "cpu") -> LatentTextToImage:
    """The latent text-to-image model of a checkpoint (EMA weights, eval mode)."""
    return load_model(path, "text_to_image", lambda values: LatentTextToImage(TextToImageConfig.from_dict(values)),
                      device, True, "(train one with python train.py --config-name=mnist_txt2img)")


def export_model(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """The small copy ``pretrained/`` ships: the run config, the model config, the EMA weights and metrics."""
    payload = load_checkpoint(source)
    recipe = payload["config"].get("recipe", "policy")
    if recipe not in SHIPPABLE_RECIPES or "model_config" not in payload:
        raise CheckpointError(f"{source} holds no generative model (recipe {recipe!r}; these export: "
                              f"{', '.join(SHIPPABLE_RECIPES)}); a policy exports with python -m dpstack.policy.export")
    weights = model_weights(payload)
    slim = {"config": payload["config"], "model_config": payload["model_config"], "state_dicts": {"model": weights},
            "metrics": payload.get("metrics", {}), "exported_from": str(source)}
    return save_checkpoint(slim, destination)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpstack.generative.checkpoint SOURCE DESTINATION``: write the small copy."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=export_model.__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    try:
        written = export_model(args.source, args.destination)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
