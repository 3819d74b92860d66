"""Weight averages of policies fine-tuned from one run ("model soups", Wortsman et al. 2022).

Fine-tunes that start from the same weights stay in one basin of the loss, so the uniform mean of their
weights, θ̄ = (1/K) Σ_k θ_k, is itself a good network (often better than each ingredient). Averaging is only
meaningful for such siblings: the ingredients must share the architecture and the normaliser exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dpstack.policy.checkpoint import CheckpointError, load_checkpoint, model_weights, save_checkpoint
from dpstack.policy.diffusion_policy import INFERENCE_SETTINGS

NORMALIZER_PREFIX = "normalizer."


def _policy_weights(payload: dict, path) -> dict[str, torch.Tensor]:
    """The EMA weights of a policy checkpoint (the raw ones when it has no EMA copy), as float32."""
    if "policy_config" not in payload:
        raise CheckpointError(f"checkpoint {path} holds no policy; only policies are averaged")
    return {key: value.float() if value.is_floating_point() else value for key, value in model_weights(payload).items()}


def _is_shared(key: str, value: torch.Tensor) -> bool:
    """Tensors that siblings hold identically (the normaliser, integer buffers): copied, never averaged."""
    return key.startswith(NORMALIZER_PREFIX) or not value.is_floating_point()


def _architecture(policy_config: dict) -> dict:
    return {key: value for key, value in policy_config.items() if key not in INFERENCE_SETTINGS}


def _check_siblings(first: dict, other: dict, first_path, other_path) -> None:
    """Raise ``CheckpointError`` unless ``other`` has ``first``'s tensors, shapes and normaliser."""
    if first.keys() != other.keys():
        missing = sorted(first.keys() ^ other.keys())[:3]
        raise CheckpointError(f"{other_path} and {first_path} hold different tensors (e.g. {missing}); "
                              f"only fine-tunes of one run can be averaged")
    for key, value in first.items():
        if value.shape != other[key].shape:
            raise CheckpointError(f"{key} has shape {tuple(other[key].shape)} in {other_path} but "
                                  f"{tuple(value.shape)} in {first_path}")
        if _is_shared(key, value) and not torch.equal(value, other[key]):
            raise CheckpointError(f"{other_path} and {first_path} differ in {key}: they do not share a "
                                  f"normaliser, so they are not fine-tunes of one run and cannot be averaged")


def average_policies(sources: list[str | os.PathLike], destination: str | os.PathLike) -> Path:
    """Write the uniform weight average of the policies in ``sources`` as a deployment file (the format
    of ``export_for_inference``; inference settings and config from the first source).

    θ̄ = (1/K) Σ_k θ_k over the network weights; the normaliser, shared by construction, is copied."""
    if len(sources) < 2:
        raise ValueError(f"averaging needs at least two policies, got {len(sources)}")
    payloads = [load_checkpoint(path) for path in sources]
    weights = [_policy_weights(payload, path) for payload, path in zip(payloads, sources)]
    for payload, other, path in zip(payloads[1:], weights[1:], sources[1:]):
        if _architecture(payload["policy_config"]) != _architecture(payloads[0]["policy_config"]):
            raise CheckpointError(f"{path} and {sources[0]} are different architectures; "
                                  f"only fine-tunes of one run can be averaged")
        _check_siblings(weights[0], other, sources[0], path)
    averaged = {}
    for key, value in weights[0].items():
        averaged[key] = value if _is_shared(key, value) else torch.stack([w[key] for w in weights]).mean(dim=0)
    soup = {"config": payloads[0]["config"], "policy_config": payloads[0]["policy_config"],
            "state_dicts": {"model": averaged}, "metrics": {},
            "averaged_from": [str(path) for path in sources]}
    return save_checkpoint(soup, destination)


def main(argv: list[str] | None = None) -> Path:
    """``python -m dpstack.policy.soup DESTINATION SOURCE SOURCE [SOURCE ...]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Average the weights of policies fine-tuned from one run "
                                                 "(a model soup) into one deployment file.")
    parser.add_argument("destination", type=Path)
    parser.add_argument("sources", type=Path, nargs="+", help="policy checkpoints (training or deployment files)")
    args = parser.parse_args(argv)
    try:
        written = average_policies(args.sources, args.destination)
    except (CheckpointError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {written}: the mean of {len(args.sources)} policies ({written.stat().st_size / 1e6:.1f} MB)")
    return written


if __name__ == "__main__":
    main()
