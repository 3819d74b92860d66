"""Diffusion Policy: the conditional 1-D U-Net, observation encoders, the policy, receding-horizon execution
and checkpoints. The names most users need are here::

    from dpstack.policy import load_policy
    policy = load_policy("pretrained/pusht_lowdim.ckpt")          # EMA weights, eval mode
    policy.predict_action({"obs": obs})                            # obs (B, 2, 20) -> action (B, Ta, 2)

They are imported on first use (PEP 562), so that ``python -m dpstack.policy.checkpoint`` runs its module once.
"""
import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "export_for_inference": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_policy": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DiffusionPolicyConfig": "diffusion_policy",
    "DiffusionUnetPolicy": "diffusion_policy",
    "with_inference_settings": "diffusion_policy",
    "ObservationHistory": "executor",
    "RecedingHorizonExecutor": "executor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
