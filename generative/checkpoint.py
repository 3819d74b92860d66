"""Image-DDPM checkpoints: load the model (EMA weights, eval mode; other kinds refused) and write the small copy."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint, load_model, save_checkpoint
from dpstack.generative.image_diffusion import ImageDiffusion, ImageDiffusionConfig

RECIPE = "image_diffusion"


def load_image_model(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> ImageDiffusion:
    """The image DDPM of a checkpoint (EMA weights, eval mode); other kinds of checkpoint are refused."""
    return load_model(path, RECIPE, lambda values: ImageDiffusion(ImageDiffusionConfig.from_dict(values)), device,
                      use_ema, "(train one with python train.py --config-name=mnist_ddpm)")


def export_image_model(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """The small copy ``pretrained/`` ships: the run config, the model config, the EMA weights and metrics."""
    payload = load_checkpoint(source)
    if payload["config"].get("recipe") != RECIPE or "model_config" not in payload:
        raise CheckpointError(f"{source} holds no image DDPM (recipe {payload['config'].get('recipe', 'policy')!r})")
    states = payload["state_dicts"]
    weights = states.get("ema_model") if states.get("ema_model") is not None else states["model"]
    slim = {"config": payload["config"], "model_config": payload["model_config"], "state_dicts": {"model": weights},
            "metrics": payload.get("metrics", {}), "exported_from": str(source)}
    return save_checkpoint(slim, destination)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpstack.generative.checkpoint SOURCE DESTINATION``: write the small copy."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=export_image_model.__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    try:
        written = export_image_model(args.source, args.destination)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
