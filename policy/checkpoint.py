"""Policy checkpoints: ``load_policy`` for evaluation and deployment, and the small deployment copy.

The file format (atomic writes, validated reads) is the core's, ``dpstack.diffusion.checkpoint_io``; its
functions are re-exported here. A policy checkpoint holds ``policy_config`` beside the run's config.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dpstack.diffusion.checkpoint_io import CheckpointError, load_checkpoint, load_weights, model_weights, save_checkpoint  # noqa: F401
from dpstack.policy.diffusion_policy import (
    INFERENCE_SETTINGS,
    SAMPLERS,
    DiffusionPolicyConfig,
    DiffusionUnetPolicy,
    with_inference_settings,
)

WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def export_for_inference(source: str | os.PathLike, destination: str | os.PathLike,
                         weights_dtype: str = "float32", **inference_settings) -> Path:
    """A small copy of a training checkpoint for deployment: config, policy config, EMA weights and
    metrics (no raw weights, optimizer, LR schedule or RNG state); ``load_policy`` reads it.

    ``inference_settings`` (``sampler``, ``num_inference_steps``, ``n_action_steps``, ``ddim_steps_offset``,
    ``init_noise_scale``) are written into the copy's policy config, so that every loader of the file runs with
    them (e.g. ``n_action_steps=10``).

    ``weights_dtype="float16"`` stores the network weights at half precision (half the file; 10-bit
    mantissa, relative rounding ≤ 2^-11), the normaliser's statistics stay float32. ``load_policy``
    casts them back to the model's float32 parameters.
    """
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    payload = load_checkpoint(source)
    if "policy_config" not in payload:
        raise CheckpointError(f"checkpoint {source} holds no policy; only policies are exported for deployment")
    policy_config = with_inference_settings(DiffusionPolicyConfig.from_dict(payload["policy_config"]),
                                            **inference_settings)
    weights = model_weights(payload)
    network = [key for key, value in weights.items() if value.is_floating_point() and not key.startswith("normalizer.")]
    weights = {**weights, **{key: weights[key].to(WEIGHT_DTYPES[weights_dtype]) for key in network}}
    overflowed = [key for key in network if not weights[key].isfinite().all()]
    if overflowed:
        raise ValueError(f"weights {overflowed[:3]} are not finite at {weights_dtype} (float16 stops at 65504); "
                         f"export them as float32")
    slim = {"config": payload["config"]} if "config" in payload else {}
    slim["policy_config"] = policy_config.to_dict()
    slim["state_dicts"] = {"model": weights}
    slim["metrics"] = payload.get("metrics", {})
    slim["exported_from"] = str(source)
    return save_checkpoint(slim, destination)


def build_policy(policy_config: dict) -> DiffusionUnetPolicy:
    return DiffusionUnetPolicy(DiffusionPolicyConfig.from_dict(policy_config))


def load_policy(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu",
                use_ema: bool = True, optimize: bool = False) -> DiffusionUnetPolicy:
    """The ready-to-run policy of a checkpoint: EMA weights when present, eval mode, on ``device``;
    ``optimize=True`` also traces the U-Net (``DiffusionUnetPolicy.optimize_for_inference``).

    An exported file (ONNX, or a TorchScript archive from ``python -m dpstack.policy.export``; told apart
    from checkpoints by content, not name) loads as an ``ExportedPolicy`` with the same interface; it runs
    on the CPU."""
    from dpstack.policy.export import ExportedPolicy, exported_format

    if exported_format(checkpoint_path) is not None:
        if torch.device(device).type != "cpu":
            raise CheckpointError(f"{checkpoint_path} is an exported policy, which runs on the CPU; pass device='cpu'")
        return ExportedPolicy(checkpoint_path)
    payload = load_checkpoint(checkpoint_path, map_location=device)
    if "policy_config" not in payload:
        kind = payload.get("config", {}).get("recipe", "unknown")
        raise CheckpointError(f"checkpoint {checkpoint_path} holds a model of recipe {kind!r}, not a policy "
                              f"(sample from it with python -m dpstack.generative.sample)")
    policy = build_policy(payload["policy_config"])
    policy = load_weights(policy, payload, checkpoint_path, use_ema).to(device).eval()
    return policy.optimize_for_inference() if optimize else policy


def main(argv: list[str] | None = None) -> Path:
    """``python -m dpstack.policy.checkpoint SOURCE DESTINATION [--weights-dtype float16]``: export for deployment."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the deployment copy of a training checkpoint "
                                                 "(config and EMA weights; see export_for_inference).")
    parser.add_argument("source", type=Path, help="a checkpoint written by train.py, e.g. .../checkpoints/latest.ckpt")
    parser.add_argument("destination", type=Path)
    parser.add_argument("--weights-dtype", choices=sorted(WEIGHT_DTYPES), default="float32")
    parser.add_argument("--sampler", choices=SAMPLERS, help="inference sampler (default: the checkpoint's)")
    parser.add_argument("--num-inference-steps", type=int, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--n-action-steps", type=int, help="actions executed per chunk (default: the checkpoint's)")
    parser.add_argument("--ddim-steps-offset", type=int, help="shift DDIM's timesteps up (default: the checkpoint's)")
    parser.add_argument("--init-noise-scale", type=float,
                        help="sampling temperature τ: A^K ~ N(0, τ² I) (default: the checkpoint's)")
    args = parser.parse_args(argv)
    settings = {name: getattr(args, name) for name in INFERENCE_SETTINGS if getattr(args, name) is not None}
    try:
        written = export_for_inference(args.source, args.destination, args.weights_dtype, **settings)
    except (CheckpointError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB, {args.weights_dtype} weights)")
    return written


if __name__ == "__main__":
    main()
